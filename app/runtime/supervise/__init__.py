"""Supervision: shims that outlive the daemon, CRI logs, exit records."""
