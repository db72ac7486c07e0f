"""Run the cache as its own process (for kill -9 tests): ``python -m tests.blob.cacheproc ROOT UPSTREAM PORT``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from app.api.registry import create_registry_app
from app.api.registry.server import RegistryServer
from app.blob.cache import BlobCache
from app.config import BlobSettings, UpstreamSettings
from app.content import LocalContentStore
from app.services.cache import CacheService
from app.state.db import open_database


async def main(root: Path, upstream: str, port: int) -> None:
    settings = BlobSettings(upstreams={"fake.test": UpstreamSettings(url=upstream)}, default_registry="fake.test")
    db = open_database(f"sqlite:///{root / 'vapp.db'}")
    service = CacheService(BlobCache(settings, LocalContentStore(root / "content"), db))
    await service.start()
    await RegistryServer("registry", create_registry_app(service), f"127.0.0.1:{port}").start()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
