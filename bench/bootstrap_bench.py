"""Bootstrap benchmark: the cost of a reconcile pass with nothing to do, and cold applies of etcd.

Run as root (loopback only, temp dirs, a private docker-registry)::

    .venv/bin/python bench/bootstrap_bench.py [--components 50] [--passes 200] [--runs 10]

(a) no-op reconcile pass with N components running (host processes, one rendered
    config file each, dependencies in a chain of 5): time per ``reconcile_once``
    (intent sync, rendering, PKI check, file hashing, liveness, plan). Target < 50 ms.
(b) cold apply of the etcd profile to healthy (HTTPS with a client certificate), image
    already cached in the image service: fresh bootstrap state each run (PKI generated,
    config rendered, container created from the overlay rootfs, started, health-checked).
(c) the same with the host driver, and the peer: a hand-run ``etcd`` with ready-made
    certificates polled over HTTPS until healthy (what a shell script would do), to show
    what the loop adds.
Figures are p50 (and p90) over ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import yaml  # noqa: E402

from app.bootstrap.driver import HostProcessDriver  # noqa: E402
from app.bootstrap.instantiate import NodeContext  # noqa: E402
from app.bootstrap.service import BootstrapService  # noqa: E402
from app.state.db import open_database  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def service(state: Path, driver: object, profile_dirs: tuple[Path, ...] = ()) -> BootstrapService:
    db = open_database(f"sqlite:///{state}/vapp.db")
    node = NodeContext("node1", "127.0.0.1", state, str(state / "cri.sock"), str(state / "dns" / "hosts"))
    return BootstrapService(db=db, driver=driver, node=node, intents_dir=state / "intents",  # type: ignore[arg-type]
                            profile_dirs=profile_dirs, interval=3600)


def many_profile(root: Path, n: int) -> Path:
    comps = []
    for i in range(n):
        comps.append({
            "name": f"c{i}", "image": "busybox",
            "command": ["/bin/busybox", "sleep", "3600"],
            "templates": [{"source": f"c{i}.conf", "content": "id={{ intent }}-" + str(i) + "\nport={{ port }}\n",
                           "dest": "config/c.conf"}],
            **({"depends_on": [f"c{i - 1}"]} if i % 5 else {}),
        })
    doc = {"name": "many", "variables": {"port": {"type": "port", "default": 8080}}, "components": comps}
    (root / "many").mkdir(parents=True)
    (root / "many" / "profile.yaml").write_text(yaml.safe_dump(doc))
    return root


async def bench_noop(n: int, passes: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="bsbench-"))
    svc = service(tmp / "state", HostProcessDriver(tmp / "state" / "bootstrap" / "host"),
                  (many_profile(tmp / "profiles", n),))
    try:
        svc.put_intent({"name": "many", "profile": "many"})
        t0 = time.perf_counter()
        st = await svc.apply(timeout=120)
        cold = time.perf_counter() - t0
        assert all(c["phase"] == "running" for c in st["components"]) and len(st["components"]) == n, st
        times = []
        for _ in range(passes):
            t = time.perf_counter()
            actions = await svc.reconcile_once()
            times.append(time.perf_counter() - t)
            assert not [a for a in actions if a.mutating], actions
        return {"cold_s": cold, "p50_ms": pct(times, 0.5) * 1000, "p90_ms": pct(times, 0.9) * 1000}
    finally:
        for key in await svc.driver.keys():
            await svc.driver.remove(key)
        svc.store.db.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def cold_etcd(base: Path, driver_factory, runs: int, extra: dict[str, object]) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(runs):
        state = base / f"run{i}"
        driver = driver_factory(state)
        svc = service(state, driver)
        intent = {"name": "etcd", "profile": "etcd",
                  "values": {"client_port": free_port(), "peer_port": free_port(), **extra}}
        try:
            t = time.perf_counter()
            svc.put_intent(intent)
            st = await svc.apply(timeout=120)
            out.append(time.perf_counter() - t)
            c = st["components"][0]
            assert c["healthy"] is True, st
        finally:
            for key in await driver.keys():
                await driver.remove(key)
            svc.store.db.close()
    return out


async def peer_etcd(base: Path, runs: int) -> list[float]:
    """Hand-run etcd with certificates made beforehand (by our PKI, untimed)."""
    from app.bootstrap.pki import LeafRequest, Pki

    pki = Pki(base / "peer-pki")
    pki.ensure(["etcd-ca"], [LeafRequest("srv", "etcd-ca", "node1", (), ("server", "client"), ("localhost",),
                                         ("127.0.0.1",)),
                             LeafRequest("cli", "etcd-ca", "cli", (), ("client",))], sa_key=False)
    ctx = ssl.create_default_context(cafile=str(pki.crt("etcd-ca")))
    ctx.load_cert_chain(pki.crt("cli"), pki.key("cli"))
    out = []
    for i in range(runs):
        cport, pport = free_port(), free_port()
        data = base / f"peer{i}"
        t = time.perf_counter()
        proc = subprocess.Popen(
            ["etcd", "--name", "node1", "--data-dir", str(data),
             f"--listen-client-urls=https://127.0.0.1:{cport}", f"--advertise-client-urls=https://127.0.0.1:{cport}",
             f"--listen-peer-urls=https://127.0.0.1:{pport}",
             f"--initial-advertise-peer-urls=https://127.0.0.1:{pport}",
             f"--initial-cluster=node1=https://127.0.0.1:{pport}",
             f"--cert-file={pki.crt('srv')}", f"--key-file={pki.key('srv')}", "--client-cert-auth",
             f"--trusted-ca-file={pki.crt('etcd-ca')}", f"--peer-cert-file={pki.crt('srv')}",
             f"--peer-key-file={pki.key('srv')}", f"--peer-trusted-ca-file={pki.crt('etcd-ca')}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            async with httpx.AsyncClient(verify=ctx) as client:
                while True:
                    try:
                        r = await client.get(f"https://127.0.0.1:{cport}/health", timeout=2)
                        if '"health":"true"' in r.text:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.2)  # the loop's wait task polls at the same interval
            out.append(time.perf_counter() - t)
        finally:
            proc.kill()
            proc.wait()
    return out


def container_factory(tmp: Path):  # type: ignore[no-untyped-def]
    """The real engines with the etcd image pulled once (cached); returns (factory, closer)."""
    from tests.bootstrap.engines import build_etcd_image, build_stack
    from tests.helpers.procs import stop_pid
    from tests.helpers.registry import start_registry

    reg = start_registry(tmp / "registry")
    ref = build_etcd_image(tmp / "image", reg.host, "bench")
    db = open_database(f"sqlite:///{tmp}/engines.db")
    stack = build_stack(db, tmp / "engines", reg.url)

    def factory(state: Path):  # type: ignore[no-untyped-def]
        from app.bootstrap.container_driver import ContainerServiceDriver

        return ContainerServiceDriver(stack.driver.puller, stack.driver.runner, state / "containers", stop_grace=2)

    async def close() -> None:
        await stack.close()
        db.close()
        stop_pid(reg.pid)

    return factory, ref, stack, close


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--components", type=int, default=50)
    ap.add_argument("--passes", type=int, default=200)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()

    noop = await bench_noop(args.components, args.passes)
    print(f"(a) no-op reconcile pass, {args.components} components: p50 {noop['p50_ms']:.1f} ms, "
          f"p90 {noop['p90_ms']:.1f} ms (target < 50 ms); cold apply of all {noop['cold_s']:.2f} s")

    tmp = Path(tempfile.mkdtemp(prefix="bsbench-etcd-"))
    try:
        factory, ref, stack, close = container_factory(tmp)
        try:
            await stack.driver.puller.pull(ref, lambda _s: None)  # cache the image (untimed)
            cont = await cold_etcd(tmp / "c", factory, args.runs, {"etcd_image": ref, "etcd_command": "/usr/bin/etcd"})
        finally:
            await close()
        host = await cold_etcd(tmp / "h", lambda s: HostProcessDriver(s / "host"), args.runs, {})
        peer = await peer_etcd(tmp, args.runs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    p = statistics.median
    print(f"(b) cold apply etcd profile, container from cached image: p50 {p(cont) * 1000:.0f} ms, "
          f"p90 {pct(cont, 0.9) * 1000:.0f} ms")
    print(f"(c) cold apply etcd profile, host driver:                 p50 {p(host) * 1000:.0f} ms, "
          f"p90 {pct(host, 0.9) * 1000:.0f} ms")
    print(f"    peer: hand-run etcd (certs ready) to healthy:          p50 {p(peer) * 1000:.0f} ms")
    print(f"    ratios: container/peer {p(cont) / p(peer):.2f}x, host/peer {p(host) / p(peer):.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
