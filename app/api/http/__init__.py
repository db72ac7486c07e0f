"""Admin REST + Prometheus metrics (FastAPI)."""
