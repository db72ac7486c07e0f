"""Run the cache as its own process (for kill -9 tests): ``python -m tests.blob.cacheproc ROOT UPSTREAM PORT``."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvicorn

from app.api.registry import create_registry_app
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
    config = uvicorn.Config(create_registry_app(service), host="127.0.0.1", port=port, log_config=None,
                            access_log=False, lifespan="off")  # fmt: skip
    await uvicorn.Server(config).serve()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
