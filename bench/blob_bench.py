"""Registry cache vs Debian's docker-registry, side by side in one run, same client, same blobs.

    (a) warm blob throughput, 64 MiB and 512 MiB (curl): cache vs docker-registry from its own storage
    (b) warm manifest GET: requests/s, p50, p99 (one asyncio keep-alive client, 16 connections)
    (c) cold pull time (skopeo copy to dir:): through a fresh cache vs straight from the upstream
    (d) 32 concurrent curl clients on one cold 64 MiB blob: upstream bytes (counted by a TCP proxy
        in front of the upstream) and time to last byte; cache vs docker-registry in proxy mode

Run: ``.venv/bin/python bench/blob_bench.py [--quick]``. Loopback only; a few minutes at most.
Targets: (a), (b) ratio >= 1; (c) within 10 % of direct; (d) exactly one upstream fetch.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
MiB = 1024 * 1024
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=0.5)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:
            p = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        p.kill()
        p.wait()

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                self.stop(p)


def docker_registry(procs: Procs, work: Path, proxy: str | None = None) -> str:
    work.mkdir(parents=True)
    port = free_port()
    cfg: dict[str, Any] = {
        "version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(work / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "bench"},
    }  # fmt: skip
    if proxy:
        cfg["proxy"] = {"remoteurl": proxy}
    (work / "config.yml").write_text(json.dumps(cfg))
    procs.start(["docker-registry", "serve", str(work / "config.yml")], work / "log")
    wait_http(f"http://127.0.0.1:{port}/v2/")
    return f"127.0.0.1:{port}"


def cache_node(procs: Procs, work: Path, upstream: str, upstream_url: str) -> tuple[str, subprocess.Popen[bytes]]:
    work.mkdir(parents=True)
    port = free_port()
    p = procs.start([sys.executable, str(ROOT / "bench" / "blob_node.py"), str(work), str(port), upstream,
                     upstream_url], work / "log")  # fmt: skip
    wait_http(f"http://127.0.0.1:{port}/v2/")
    return f"127.0.0.1:{port}", p


def push_blob(host: str, repo: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = httpx.post(f"http://{host}/v2/{repo}/blobs/uploads/")
    loc = r.headers["location"]
    loc = loc if loc.startswith("http") else f"http://{host}{loc}"
    r = httpx.put(loc + ("&" if "?" in loc else "?") + "digest=" + digest, content=data, timeout=120)
    assert r.status_code == 201, r.text
    return digest


def push_image(host: str, repo: str, layer: bytes) -> None:
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    cd, ld = push_blob(host, repo, config.encode()), push_blob(host, repo, layer)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": len(layer)}],
    })  # fmt: skip
    r = httpx.put(f"http://{host}/v2/{repo}/manifests/latest", content=manifest,
                  headers={"Content-Type": MANIFEST_TYPE})  # fmt: skip
    assert r.status_code == 201, r.text


def curl(url: str) -> tuple[float, int]:
    out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{time_total} %{size_download}", url],
                         capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return float(out[0]), int(out[1])


def bench_a(reg: str, cache: str, digests: dict[int, str], reps: int) -> dict[str, float]:
    out = {}
    for size, digest in digests.items():
        curl(f"http://{cache}/v2/bench/blob/blobs/{digest}")  # warm the cache
        best: dict[str, list[float]] = {"registry": [], "cache": []}
        for _ in range(reps):
            for name, host in (("registry", reg), ("cache", cache)):
                t, n = curl(f"http://{host}/v2/bench/blob/blobs/{digest}")
                assert n == size * MiB
                best[name].append(n / t / 1e6)
        r, c = statistics.median(best["registry"]), statistics.median(best["cache"])
        print(f"(a) warm {size:>3} MiB blob   docker-registry {r:8.0f} MB/s   cache {c:8.0f} MB/s   ratio {c / r:5.2f}")
        out[f"a_{size}"] = c / r
    return out


async def _load(host: str, path: str, seconds: float, conns: int) -> tuple[float, float, float]:
    req = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: {MANIFEST_TYPE}\r\n\r\n").encode()
    lat: list[float] = []
    stop = time.monotonic() + seconds

    async def worker() -> None:
        r, w = await asyncio.open_connection(*host.split(":"))
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            w.write(req)
            head = await r.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length"))  # fmt: skip
            await r.readexactly(length)
            lat.append(time.perf_counter() - t0)
        w.close()

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conns)))
    elapsed = time.monotonic() - t0
    lat.sort()
    return len(lat) / elapsed, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def bench_b(reg: str, cache: str, seconds: float) -> dict[str, float]:
    path = "/v2/bench/img/manifests/latest"
    httpx.get(f"http://{cache}{path}", headers={"Accept": MANIFEST_TYPE})  # warm
    res = {}
    for name, host in (("registry", reg), ("cache", cache)):
        res[name] = asyncio.run(_load(host, path, seconds, 16))
    (rr, rp50, rp99), (cr, cp50, cp99) = res["registry"], res["cache"]
    print(f"(b) warm manifest GET       docker-registry {rr:7.0f} req/s p50 {rp50:5.2f} ms p99 {rp99:6.2f} ms")
    print(f"                            cache           {cr:7.0f} req/s p50 {cp50:5.2f} ms p99 {cp99:6.2f} ms"
          f"   ratio {cr / rr:5.2f} (req/s)")  # fmt: skip
    return {"b_rps": cr / rr, "b_p99": rp99 / cp99}


def skopeo_pull(host: str, dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    t0 = time.monotonic()
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{host}/bench/img:latest",
                    f"dir:{dest}"], check=True)  # fmt: skip
    return time.monotonic() - t0


def bench_c(procs: Procs, work: Path, reg: str, reps: int) -> dict[str, float]:
    direct, through = [], []
    for i in range(reps):
        direct.append(skopeo_pull(reg, work / "pull-direct"))
        host, p = cache_node(procs, work / f"cold-cache-{i}", reg, f"http://{reg}")
        through.append(skopeo_pull(host, work / "pull-cache"))
        procs.stop(p)
    d, c = statistics.median(direct), statistics.median(through)
    print(f"(c) cold pull (64 MiB img)  direct {d * 1000:7.0f} ms   through cache {c * 1000:7.0f} ms   "
          f"overhead {100 * (c / d - 1):+5.1f} %")  # fmt: skip
    return {"c_overhead": c / d - 1}


class CountingProxy:
    """A TCP proxy counting bytes from the upstream, in its own thread and loop."""

    def __init__(self, target: str) -> None:
        self.target = target.split(":")
        self.bytes = 0
        self.port = 0
        self._ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True).start()
        self._ready.wait(5)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, count: bool) -> None:
        try:
            while data := await r.read(256 * 1024):
                if count:
                    self.bytes += len(data)
                w.write(data)
                await w.drain()
        except ConnectionError:
            pass
        finally:
            w.close()

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(self.target[0], int(self.target[1]))
        await asyncio.gather(self._pipe(cr, uw, False), self._pipe(ur, cw, True))

    async def _main(self) -> None:
        server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await asyncio.Event().wait()


def bench_d(procs: Procs, work: Path, reg: str, blob: bytes) -> dict[str, float]:
    out = {}
    for name in ("docker-registry proxy", "cache"):
        repo = f"bench/cold{len(out)}"
        digest = push_blob(reg, repo, blob + name.encode())  # a blob nobody has fetched yet
        proxy = CountingProxy(reg)
        purl = f"http://127.0.0.1:{proxy.port}"
        if name == "cache":
            host, _ = cache_node(procs, work / "d-cache", f"127.0.0.1:{proxy.port}", purl)
        else:
            host = docker_registry(procs, work / "d-proxy", proxy=purl)
        before = proxy.bytes
        url = f"http://{host}/v2/{repo}/blobs/{digest}"
        t0 = time.monotonic()
        clients = [subprocess.Popen(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url],
                                    stdout=subprocess.PIPE, text=True) for _ in range(32)]  # fmt: skip
        sizes = [int(c.communicate()[0] or 0) for c in clients]
        ttlb = time.monotonic() - t0
        fetched = (proxy.bytes - before) / len(blob)
        ok = sum(1 for s in sizes if s == len(blob) + len(name))
        print(f"(d) 32 clients, cold 64 MiB {name:22s} upstream fetches {fetched:5.2f}x   "
              f"time to last byte {ttlb * 1000:6.0f} ms   complete {ok}/32")  # fmt: skip
        out[f"d_{name}"] = fetched
        out[f"d_{name}_ttlb"] = ttlb
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller runs (skips the 512 MiB blob)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="blob-bench-"))
    procs = Procs()
    try:
        reg = docker_registry(procs, work / "upstream")
        sizes = [64] if args.quick else [64, 512]
        digests = {s: push_blob(reg, "bench/blob", os.urandom(s * MiB)) for s in sizes}
        push_image(reg, "bench/img", os.urandom(64 * MiB))
        cache, _ = cache_node(procs, work / "cache", reg, f"http://{reg}")
        print(f"upstream docker-registry {reg}, cache {cache}, work dir {work}")
        res = bench_a(reg, cache, digests, 3 if args.quick else 5)
        res |= bench_b(reg, cache, 2.0 if args.quick else 4.0)
        res |= bench_c(procs, work, reg, 2 if args.quick else 3)
        res |= bench_d(procs, work, reg, os.urandom(64 * MiB))
        print("ratios:", json.dumps({k: round(v, 3) for k, v in res.items()}))
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
