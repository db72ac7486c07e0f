"""A stand-in daemon for tests: the container service in its own process, driven over stdin/stdout.

One JSON request per line, one JSON reply per line (``{"ok": ...}`` or ``{"error": kind, "message"}``).
Used to kill -9 "the daemon" and restart it, and to run the service as the unprivileged user.

    python -m tests.runtime.service_proc STATE_DIR RUN_DIR ['{"cgroup_parent": ...}']
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from app.config import RuntimeSettings
from app.errors import VappError
from app.runtime.forkserver import start_forkserver
from app.runtime.oci.spec import ContainerSpec, MountSpec, Resources
from app.services.container_types import CreateRequest
from app.services.containers import ContainerService
from app.state.db import open_database


def _spec(raw: dict[str, Any]) -> ContainerSpec:
    raw = dict(raw)
    for key in ("command", "args", "env"):
        if raw.get(key) is not None:
            raw[key] = tuple(raw[key])
    raw["mounts"] = tuple(MountSpec(**m) for m in raw.get("mounts", []))
    raw["resources"] = Resources(**raw.get("resources", {}))
    return ContainerSpec(**raw)


async def handle(svc: ContainerService, req: dict[str, Any]) -> Any:
    op = req["op"]
    if op == "create":
        info = await svc.create(CreateRequest(spec=_spec(req["spec"]), rootfs=req.get("rootfs"),
                                              runtime=req.get("runtime")))
        if req.get("start"):
            info = await svc.start(info.id)
        return dataclasses.asdict(info)
    if op == "inspect":
        return dataclasses.asdict(await svc.inspect(req["id"]))
    if op == "wait":
        return await svc.wait(req["id"], req.get("timeout", 20))
    if op == "stop":
        return dataclasses.asdict(await svc.stop(req["id"], req.get("timeout", 2)))
    if op == "remove":
        await svc.remove(req["id"], force=req.get("force", False))
        return None
    if op == "exec":
        result = await svc.exec(req["id"], req["argv"], req.get("timeout", 10))
        return {"exit_code": result.exit_code, "stdout": result.stdout.decode(), "stderr": result.stderr.decode(),
                "timed_out": result.timed_out}
    if op == "restore":
        return [dataclasses.asdict(i) for i in await svc.restore()]
    if op == "list":
        return [dataclasses.asdict(i) for i in await svc.list()]
    raise ValueError(f"unknown op {op}")


async def main(state_dir: str, run_dir: str, overrides: dict[str, Any]) -> None:
    forkserver = start_forkserver()
    db = open_database(f"sqlite:///{Path(state_dir) / 'vapp.db'}")
    svc = ContainerService(db, forkserver, state_dir=Path(state_dir), run_dir=Path(run_dir),
                           settings=RuntimeSettings(**{"stop_grace_seconds": 2.0, **overrides}))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ready": True}), flush=True)
    while line := await reader.readline():
        try:
            reply: dict[str, Any] = {"ok": await handle(svc, json.loads(line))}
        except VappError as exc:
            reply = {"error": exc.kind.value, "message": exc.message, "details": exc.details}
        print(json.dumps(reply, default=str), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}))
