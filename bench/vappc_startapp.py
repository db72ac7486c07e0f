"""StartApp→Running latency vs ``crun run -d`` of an equivalent prepared bundle (root).

Run: ``.venv/bin/python bench/vappc_startapp.py [--runs 50]``

* vappc: a local docker-registry holding the suite's busybox image; a real
  ``vapp-core daemon`` (subprocess, temp paths, pulling from that registry);
  the blocking client sends ``StartApp`` for a fresh app id (``sleep 300``,
  image already pulled: cached) and times until the ``AppHandle`` (the app is
  Running). Each app is stopped with no grace afterwards, outside the timing.
* crun: the same busybox rootfs unpacked into a bundle once; each run times
  ``crun run -d`` (create + start, detached) of ``sleep 300``, then kills and
  deletes outside the timing. crun 1.8 refuses this machine's hybrid cgroups, so
  the crun loop runs in a private mount namespace with the cgroup2 mount removed
  (see docs machine notes).

Prints p50/p95 of both and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def vappc_runs(runs: int, work: Path, registry: Any, ref: str) -> list[float]:
    """StartApp→Running through a real ``vapp-core daemon`` (subprocess) on temp paths."""
    from app.vappc.client import Client
    from tests.helpers.daemon import DaemonProcess

    cfg = work / "vapp.toml"
    cfg.write_text(f'[blob.upstreams."{registry.host}"]\nurl = "{registry.url}"\n')
    times: list[float] = []
    with DaemonProcess(work / "daemon", args=["--config", str(cfg)]) as d, \
            Client(str(d.vappc_socket), timeout=120) as c:
        warm = f"warm-{uuid.uuid4().hex[:6]}"
        c.start_app({"app_id": warm, "name": warm, "image": ref, "command": ["sleep", "300"]})
        c.stop_app(warm, grace=0)
        for i in range(runs):
            app_id = f"b{i}-{uuid.uuid4().hex[:6]}"
            t0 = time.perf_counter()
            c.start_app({"app_id": app_id, "name": app_id, "image": ref, "command": ["sleep", "300"]})
            times.append(time.perf_counter() - t0)
            c.stop_app(app_id, grace=0)
    return times


def crun_bundle(layout: Path, dest: Path) -> Path:
    from tests.runtime.conftest import unpack_layout

    unpack_layout(layout, dest / "rootfs")
    subprocess.run(["crun", "spec"], cwd=dest, check=True)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["process"]["args"] = ["sleep", "300"]
    cfg["process"]["terminal"] = False
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def crun_loop(bundle: str, runs: int, root: str) -> None:
    """Inside ``unshare -m``: hide cgroup2 from crun, time ``crun run -d``; print JSON times."""
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=False)
    times = []
    for i in range(runs + 1):
        cid = f"vb-{os.getpid()}-{i}"
        t0 = time.perf_counter()
        subprocess.run(["crun", "--root", root, "run", "-d", "--bundle", bundle, cid], check=True,
                       stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - t0
        subprocess.run(["crun", "--root", root, "delete", "-f", cid], check=True)
        if i:  # the first run warms caches
            times.append(elapsed)
    print(json.dumps(times))


def crun_runs(bundle: Path, runs: int, work: Path) -> list[float]:
    out = subprocess.run(
        ["unshare", "-m", sys.executable, __file__, "--crun-loop", str(bundle), str(runs), str(work / "crun-root")],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--crun-loop", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.crun_loop:
        crun_loop(args.crun_loop[0], int(args.crun_loop[1]), args.crun_loop[2])
        return
    if os.geteuid() != 0:
        raise SystemExit("vappc_startapp: run as root (the app stack mounts overlay rootfs on the host)")
    from tests.fixtures.images import cached_images, push
    from tests.helpers.registry import running_registry

    work = Path(tempfile.mkdtemp(prefix="vcs", dir="/tmp"))
    try:
        image = cached_images()["busybox"]
        with running_registry(work / "registry") as reg:
            pushed = push(image, reg.host)
            vappc = vappc_runs(args.runs, work, reg, pushed.ref)
        crun = crun_runs(crun_bundle(Path(image.oci_layout), work / "bundle"), args.runs, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"StartApp→Running (cached busybox, {args.runs} runs) vs crun run -d of the same rootfs")
    print(f"{'':>10} {'p50 ms':>9} {'p95 ms':>9} {'mean ms':>9}")
    for name, vals in (("vappc", vappc), ("crun", crun)):
        print(f"{name:>10} {pct(vals, .5) * 1e3:>9.1f} {pct(vals, .95) * 1e3:>9.1f} "
              f"{statistics.mean(vals) * 1e3:>9.1f}")
    print(f"{'ratio':>10} {pct(vappc, .5) / pct(crun, .5):>8.2f}x {pct(vappc, .95) / pct(crun, .95):>8.2f}x")


if __name__ == "__main__":
    main()
