"""Runtime benchmark: /bin/true rootless, create+start+wait+delete, side by side; supervision memory.

    .venv/bin/python bench/runtime_bench.py [-n 30] [--idle 5]

Peers on the same bundle: native through the service (fork server + shim, no interpreter start
per container), native through ``vapp-oci run``, ``crun run`` (with the hybrid-cgroup wrapper
this machine needs), ``runc run``. Then the PSS of everything that supervises one idle
container (its shim; the fork server is shared and shown apart) vs containerd's shim + runc
(~5.5 MB, the figure quoted in the issue). Run as root it re-executes itself as ``vapptest``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import RuntimeSettings  # noqa: E402
from app.runtime.backends.external import ExternalRuntime  # noqa: E402
from app.runtime.forkserver import start_forkserver  # noqa: E402
from app.runtime.oci.spec import ContainerSpec  # noqa: E402
from app.services.container_types import CreateRequest  # noqa: E402
from app.services.containers import ContainerService  # noqa: E402
from app.state.db import open_database  # noqa: E402

CONTAINERD_SHIM_RUNC_PSS_MB = 5.5


def make_rootfs(base: Path) -> Path:
    rootfs = base / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "etc").mkdir()
    for d in ("proc", "sys", "dev", "tmp"):
        (rootfs / d).mkdir()
    shutil.copy2("/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("true", "sh", "sleep"):
        os.symlink("busybox", rootfs / "bin" / applet)
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    return rootfs


def make_bundle(base: Path, rootfs: Path) -> Path:
    bundle = base / "bundle"
    bundle.mkdir()
    subprocess.run([str(REPO / ".venv/bin/vapp-oci"), "spec", "--rootless", "--bundle", str(bundle)], check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"] = {"path": str(rootfs), "readonly": False}
    cfg["process"].update(terminal=False, args=["/bin/true"])
    (bundle / "config.json").write_text(json.dumps(cfg))
    return bundle


def time_cli(argv_for: Callable[[str], list[str]], n: int) -> list[float]:
    out = []
    for _ in range(n):
        cid = f"b{uuid.uuid4().hex[:10]}"
        t0 = time.perf_counter()
        result = subprocess.run(argv_for(cid), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, check=False)
        out.append(time.perf_counter() - t0)
        if result.returncode != 0:
            raise SystemExit(f"{argv_for(cid)[:3]} failed: {result.stderr.decode()[-500:]}")
    return out


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


async def bench_all(base: Path, rootfs: Path, bundle: Path, n: int, idle: int,
                    cli: dict[str, Callable[[str], list[str]]]) -> tuple[dict[str, list[float]], float, float]:
    """Round-robin over the peers (one run each per round), so load swings hit all of them alike."""
    fs = start_forkserver()
    db = open_database(f"sqlite:///{base / 'vapp.db'}")
    svc = ContainerService(db, fs, state_dir=base / "state", run_dir=base / "run", settings=RuntimeSettings())

    async def service_once() -> None:  # the very same bundle as the command-line peers
        cid = f"s{uuid.uuid4().hex[:10]}"
        info = await svc.create(CreateRequest(spec=ContainerSpec(id=cid), bundle=str(bundle)))
        await svc.start(info.id)
        await svc.wait(info.id, 10)
        await svc.remove(info.id)

    await service_once()  # warm the fork server
    results: dict[str, list[float]] = {"native (service)": [], **{name: [] for name in cli}}
    for _ in range(n):
        t0 = time.perf_counter()
        await service_once()
        results["native (service)"].append(time.perf_counter() - t0)
        for name, argv_for in cli.items():
            results[name] += time_cli(argv_for, 1)
    ids = []
    for i in range(idle):
        info = await svc.create(CreateRequest(spec=ContainerSpec(id=f"idle{i}-{uuid.uuid4().hex[:6]}",
                                                                 command=("sleep", "1000")), rootfs=str(rootfs)))
        await svc.start(info.id)
        ids.append(info.id)
    await asyncio.sleep(0.5)
    shims = [svc._row(i).shim_pid for i in ids]
    per_container = sum(pss_kb(p) for p in shims if p) / max(1, len(shims)) / 1024
    forkserver = pss_kb(fs.pid) / 1024
    for i in ids:
        await svc.remove(i, force=True)
    await svc.close()
    fs.close()
    return results, per_container, forkserver


def containerd_shim_pss(n: int) -> float | None:
    """Root only: PSS of containerd-shim-runc-v2 per idle container (its own containerd, temp dirs)."""
    if not shutil.which("containerd") or not shutil.which("ctr"):
        return None
    base = Path(tempfile.mkdtemp(prefix="vrt-ctd-", dir="/tmp"))
    sock = base / "c.sock"
    (base / "config.toml").write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n')
    make_rootfs(base)
    daemon = subprocess.Popen(["containerd", "--config", str(base / "config.toml")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    ctr = ["ctr", "--address", str(sock)]
    ids = [f"vrt{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]
    try:
        for _ in range(100):
            if subprocess.run([*ctr, "version"], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
        for cid in ids:
            subprocess.run([*ctr, "run", "-d", "--rootfs", str(base / "rootfs"), cid, "/bin/sleep", "1000"],
                           capture_output=True, check=True)
        time.sleep(0.5)
        found = subprocess.run(["pgrep", "-f", f"containerd-shim-runc-v2 .*-address {sock}"], capture_output=True,
                               text=True).stdout.split()
        return sum(pss_kb(int(p)) for p in found) / max(1, len(found)) / 1024 if found else None
    except subprocess.CalledProcessError:
        return None
    finally:
        for cid in ids:
            subprocess.run([*ctr, "task", "kill", "-s", "9", cid], capture_output=True)
        time.sleep(0.3)
        for cid in ids:
            subprocess.run([*ctr, "task", "rm", cid], capture_output=True)
            subprocess.run([*ctr, "container", "rm", cid], capture_output=True)
        daemon.terminate()
        daemon.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def fmt(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return f"median {statistics.median(ms):7.2f} ms   p90 {ms[int(len(ms) * 0.9) - 1]:7.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--idle", type=int, default=5)
    parser.add_argument("--user", default="vapptest")
    args = parser.parse_args()
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam(args.user)
        except KeyError:
            raise SystemExit(f"run as a non-root user (no {args.user!r}: run scripts/setup-system.sh)") from None
        measured = containerd_shim_pss(args.idle)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": pw.pw_dir, "PYTHONPATH": str(REPO),
               "VRT_CONTAINERD_SHIM_PSS": "" if measured is None else f"{measured:.3f}"}
        raise SystemExit(subprocess.run([sys.executable, __file__, *sys.argv[1:]], user=pw.pw_uid,
                                        group=pw.pw_gid, env=env, cwd="/tmp").returncode)
    base = Path(tempfile.mkdtemp(prefix="vrt-bench-", dir="/tmp"))
    try:
        rootfs = make_rootfs(base)
        bundle = make_bundle(base, rootfs)
        n = args.n
        print(f"runtime bench: /bin/true, rootless (uid {os.geteuid()}), {n} runs each, create+start+wait+delete")
        oci = str(REPO / ".venv/bin/vapp-oci")
        # Bytecode caching as on an installed system (this environment may disable it).
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
        time_cli(lambda c: [oci, "--root", str(base / "oci"), "run", "-b", str(bundle), c], 1)  # warm-up
        cli = {
            "native (vapp-oci run)": lambda c: [oci, "--root", str(base / "oci"), "run", "-b", str(bundle), c],
            "crun run": lambda c: ExternalRuntime("crun", str(base / "crun")).argv("run", "-b", str(bundle), c),
            "runc run": lambda c: ["runc", "--root", str(base / "runc"), "run", "-b", str(bundle), c],
        }
        results, shim_mb, fs_mb = asyncio.run(bench_all(base, rootfs, bundle, n, args.idle, cli))
        for name, times in results.items():
            print(f"  {name:24s} {fmt(times)}")
        med = {k: statistics.median(v) for k, v in results.items()}
        print(f"  ratio native(service)/crun = {med['native (service)'] / med['crun run']:.2f}  "
              f"native(service)/runc = {med['native (service)'] / med['runc run']:.2f}  "
              f"vapp-oci/runc = {med['native (vapp-oci run)'] / med['runc run']:.2f}")
        print(f"supervision memory per idle container (PSS of its shim, {args.idle} idle): {shim_mb:.2f} MB; "
              f"fork server (one per daemon): {fs_mb:.2f} MB")
        peer = os.environ.get("VRT_CONTAINERD_SHIM_PSS")
        peer_mb, how = (float(peer), "measured here") if peer else (CONTAINERD_SHIM_RUNC_PSS_MB, "reference")
        print(f"  vs containerd-shim-runc-v2 per idle container {peer_mb:.2f} MB ({how}): ratio "
              f"{shim_mb / peer_mb:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
