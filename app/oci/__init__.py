"""Ground floor for images: one reference parser, media types, manifests and descriptors (pure, no I/O)."""
