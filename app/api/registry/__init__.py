"""The registry cache's front doors: the /v2 ASGI app and the admin router."""

from app.api.registry.admin import create_admin_router
from app.api.registry.app import create_registry_app

__all__ = ["create_admin_router", "create_registry_app"]
