"""Helpers shared by the whole test suite (ports, users, processes, services)."""
