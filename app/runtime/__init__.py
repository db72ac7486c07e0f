"""The runtime engine: images, snapshots, OCI execution, supervision, networking."""
