"""CRI v1 gRPC front door."""
