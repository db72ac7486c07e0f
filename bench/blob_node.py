"""The cache as a standalone process for benchmarks: ``python bench/blob_node.py ROOT PORT UPSTREAM_HOST UPSTREAM_URL``.

Serves /v2 exactly as the daemon does (``create_registry_app`` on ``RegistryServer``) with the
upstream as the default registry.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.api.registry import create_registry_app
from app.api.registry.server import RegistryServer
from app.blob.cache import BlobCache
from app.config import BlobSettings, UpstreamSettings
from app.content import LocalContentStore
from app.services.cache import CacheService
from app.state.db import open_database


async def main(root: Path, port: int, host: str, url: str) -> None:
    settings = BlobSettings(upstreams={host: UpstreamSettings(url=url)}, default_registry=host)
    db = open_database(f"sqlite:///{root / 'vapp.db'}")
    service = CacheService(BlobCache(settings, LocalContentStore(root / "content"), db))
    await service.start()
    server = RegistryServer("registry", create_registry_app(service), f"127.0.0.1:{port}")
    await server.start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]))
