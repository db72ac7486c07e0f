"""vappc benchmark: Ping round trips/s vs a bare asyncio echo server on the same Unix socket kind.

Run: ``.venv/bin/python bench/vappc_bench.py [--seconds 3] [--startapp N]``

Each server runs in its own process (so client and server do not share a
loop or a core's GIL), on a temporary Unix socket:

* ``vappc``: the real ``VappcServer`` (codec, per-connection ordering, peer
  credential check) answering ``{"cmd":"Ping"}`` with ``{"msg":"Ok","type":"Unit"}``;
* ``echo``: ``asyncio.start_unix_server`` echoing each line back (the floor).

The client keeps 1 or 32 connections, each doing strictly sequential round
trips for ``--seconds``; it prints round trips/s and the ratio echo/vappc
(target: within 2x). Then StartApp→Running p50/p95 vs ``crun run`` (root; see
``bench/vappc_startapp.py``; ``--startapp-runs 0`` skips it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PING = b'{"cmd":"Ping"}\n'


async def _serve_echo(path: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(handle, path)
    async with server:
        await server.serve_forever()


async def _serve_vappc(path: str) -> None:
    from app.config import VappcSettings
    from app.vappc.server import VappcServer

    server = VappcServer(VappcSettings(socket=Path(path)), backend=None)  # type: ignore[arg-type]
    await server.start()
    await asyncio.Event().wait()


def _start_server(kind: str, path: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, path])
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"{kind} server did not start")
        time.sleep(0.02)
    return proc


async def _client(path: str, seconds: float, stop_at: list[float]) -> int:
    reader, writer = await asyncio.open_unix_connection(path)
    count = 0
    try:
        while time.monotonic() < stop_at[0]:
            writer.write(PING)
            line = await reader.readline()
            if not line:
                raise RuntimeError("server closed the connection")
            count += 1
    finally:
        writer.close()
    return count


async def _measure(path: str, conns: int, seconds: float) -> float:
    stop_at = [time.monotonic() + seconds]
    started = time.monotonic()
    counts = await asyncio.gather(*(_client(path, seconds, stop_at) for _ in range(conns)))
    return sum(counts) / (time.monotonic() - started)


def ping_bench(seconds: float, rounds: int = 3) -> dict[str, float]:
    """Best of ``rounds`` per server, runs interleaved so machine noise hits both alike."""
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="vcb") as tmp:
        paths = {kind: os.path.join(tmp, f"{kind}.sock") for kind in ("echo", "vappc")}
        procs = [_start_server(kind, path) for kind, path in paths.items()]
        try:
            for conns in (1, 32):
                for path in paths.values():
                    asyncio.run(_measure(path, conns, 0.3))  # warm up
                for _ in range(rounds):
                    for kind, path in paths.items():
                        rate = asyncio.run(_measure(path, conns, seconds))
                        results[f"{kind}/{conns}"] = max(results.get(f"{kind}/{conns}", 0.0), rate)
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(5)
    return results


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--startapp-runs", type=int, default=50, help="0 skips the StartApp part (needs root)")
    args = ap.parse_args()
    if args.serve:
        kind, path = args.serve
        asyncio.run(_serve_echo(path) if kind == "echo" else _serve_vappc(path))
        return
    res = ping_bench(args.seconds, args.rounds)
    print(f"Ping round trips/s over a Unix socket (best of {args.rounds} interleaved {args.seconds:g}s runs, "
          "servers in their own processes)")
    print(f"{'connections':>12} {'vappc':>12} {'asyncio echo':>14} {'echo/vappc':>11}")
    for conns in (1, 32):
        v, e = res[f"vappc/{conns}"], res[f"echo/{conns}"]
        print(f"{conns:>12} {v:>12.0f} {e:>14.0f} {e / v:>10.2f}x")
    if args.startapp_runs > 0:
        print()
        sys.stdout.flush()
        here = Path(__file__).resolve().parent
        subprocess.run([sys.executable, str(here / "vappc_startapp.py"), "--runs", str(args.startapp_runs)],
                       check=True, timeout=900)


if __name__ == "__main__":
    main()
