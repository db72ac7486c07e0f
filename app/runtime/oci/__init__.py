"""OCI runtime: pure bundle generation, state, the vapp-oci CLI and the container init."""
