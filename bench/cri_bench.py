"""CRI benchmark: 4lock-core vs Debian's containerd (CRI plugin, runc, CNI bridge), same client code.

    sudo .venv/bin/python bench/cri_bench.py [--iterations 30] [--containers 200]

Starts, on private paths under a temp dir: a docker-registry with the suite's busybox
image and a "pause" image (busybox running ``sleep``) for containerd's sandbox; containerd
with its own config/root/state/socket/CNI conf dir; the 4lock-core CRI endpoint
(``bench/cri_node.py``, the daemon's services). Each runtime gets its own bridge + subnet.

Measures, per runtime, with one synchronous gRPC client:
  flow  RunPodSandbox → CreateContainer → StartContainer → ExecSync → StopContainer →
        RemoveContainer → StopPodSandbox → RemovePodSandbox, p50/p95 over N iterations,
        with CNI networking and with host network;
  list  ListContainers with M containers (unfiltered, filtered by pod) next to Version.
Loopback only; everything it started is stopped and its bridges deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fixtures.images import busybox_rootfs, cached_images, make_layer, push  # noqa: E402
from tests.fixtures.oci_layout import LayoutWriter  # noqa: E402
from tests.helpers.registry import running_registry  # noqa: E402

PY = str(REPO / ".venv" / "bin" / "python")


# -- setup -------------------------------------------------------------------------------------
def push_pause(layout: Path, registry_host: str) -> str:
    """busybox with Cmd ["sleep", "2147483647"]: containerd's sandbox image for this run."""
    writer = LayoutWriter(layout)
    desc = writer.put_image([make_layer(busybox_rootfs(), "gzip")],
                            config={"Cmd": ["sleep", "2147483647"]})
    writer.tag(desc, "1")
    writer.finish()
    ref = f"{registry_host}/bench/pause:1"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false",
                    f"oci:{layout}:1", f"docker://{ref}"], check=True, timeout=120)
    return ref


def bridge_conf(conf_dir: Path, name: str, subnet: str, data_dir: Path) -> str:
    bridge = f"{name}{random.randint(0, 0xFFFF):04x}"
    conf_dir.mkdir(parents=True, exist_ok=True)
    (conf_dir / "10-bench.conflist").write_text(json.dumps({
        "cniVersion": "1.0.0", "name": f"bench-{bridge}", "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
             "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": subnet}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}))
    return bridge


def containerd_config(work: Path, registry_host: str, pause: str, cni_conf: Path) -> Path:
    certs = work / "certs.d" / registry_host
    certs.mkdir(parents=True)
    (certs / "hosts.toml").write_text(
        f'server = "http://{registry_host}"\n[host."http://{registry_host}"]\n'
        '  capabilities = ["pull", "resolve"]\n  skip_verify = true\n')
    cfg = work / "config.toml"
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    cfg.write_text(f"""version = 2
root = "{work}/root"
state = "{work}/state"
[grpc]
  address = "{work}/containerd.sock"
[ttrpc]
  address = "{work}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{work}/opt"
[{cri}]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  restrict_oom_score_adj = true
  enable_cdi = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni_conf}"
[{cri}.registry]
  config_path = "{work}/certs.d"
""")
    return cfg


def wait_socket(path: Path, proc: subprocess.Popen[bytes], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if path.exists():
            try:
                channel = grpc.insecure_channel(f"unix:{path}")
                pb_grpc.RuntimeServiceStub(channel).Version(pb.VersionRequest(), timeout=2)
                channel.close()
                return
            except grpc.RpcError:
                pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer on {path}")


@contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- measurements --------------------------------------------------------------------------------
def pod_config(name: str, host_network: bool) -> pb.PodSandboxConfig:
    cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name=name, uid=f"uid-{name}", namespace="bench"))
    if not host_network:  # kubelet leaves the node's hostname to host-network pods
        cfg.hostname = name[:60]
    else:
        cfg.linux.security_context.namespace_options.network = pb.NODE
    return cfg


def flow(rt: pb_grpc.RuntimeServiceStub, image: str, name: str, host_network: bool) -> float:
    t0 = time.perf_counter()
    cfg = pod_config(name, host_network)
    pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
    ccfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name="c"), image=pb.ImageSpec(image=image),
                              command=["sleep", "3600"])
    cid = rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg),
                             timeout=60).container_id
    rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=60)
    res = rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=30), timeout=60)
    assert res.exit_code == 0, res
    rt.StopContainer(pb.StopContainerRequest(container_id=cid, timeout=0), timeout=60)
    rt.RemoveContainer(pb.RemoveContainerRequest(container_id=cid), timeout=60)
    rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=60)
    return time.perf_counter() - t0


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(label: str, sock: Path, image: str, iterations: int, n_containers: int) -> dict[str, list[float]]:
    channel = grpc.insecure_channel(f"unix:{sock}")
    rt, im = pb_grpc.RuntimeServiceStub(channel), pb_grpc.ImageServiceStub(channel)
    im.PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=120)
    results: dict[str, list[float]] = {}
    for mode, host in (("flow cni", False), ("flow hostnet", True)):
        flow(rt, image, f"{label}-warm-{int(host)}", host)
        results[mode] = [flow(rt, image, f"{label}-{int(host)}-{i}", host) for i in range(iterations)]
        print(f"  {label:10s} {mode:13s} p50 {statistics.median(results[mode]) * 1e3:7.1f} ms", flush=True)
    pods = []
    per_pod = 20
    for p in range(max(1, n_containers // per_pod)):
        cfg = pod_config(f"{label}-list-{p}", True)
        pod = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=60).pod_sandbox_id
        pods.append(pod)
        for c in range(per_pod):
            ccfg = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=f"c{c}"), image=pb.ImageSpec(image=image),
                                      command=["sleep", "3600"])
            rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod, config=ccfg, sandbox_config=cfg),
                               timeout=60)
    total = len(rt.ListContainers(pb.ListContainersRequest(), timeout=30).containers)
    assert total >= n_containers, total
    flt = pb.ListContainersRequest(filter=pb.ContainerFilter(pod_sandbox_id=pods[0]))
    results["list all"] = timed(lambda: rt.ListContainers(pb.ListContainersRequest(), timeout=30), 200)
    results["list by pod"] = timed(lambda: rt.ListContainers(flt, timeout=30), 200)
    results["version"] = timed(lambda: rt.Version(pb.VersionRequest(), timeout=30), 200)
    for pod in pods:
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=120)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=120)
    channel.close()
    return results


def report(ours: dict[str, list[float]], theirs: dict[str, list[float]], n: int) -> None:
    print(f"\n{'measure':14s} {'4lock p50':>10s} {'p95':>8s} {'ctrd p50':>10s} {'p95':>8s} {'ratio p50':>10s}")
    for key in ours:
        a, b = ours[key], theirs[key]
        unit, scale = ("ms", 1e3)
        print(f"{key:14s} {pct(a, .5) * scale:8.2f}{unit} {pct(a, .95) * scale:6.2f}{unit} "
              f"{pct(b, .5) * scale:8.2f}{unit} {pct(b, .95) * scale:6.2f}{unit} {pct(a, .5) / pct(b, .5):9.2f}x")
    print(f"(flow: {len(ours['flow cni'])} iterations; list: {n} containers, 200 calls; ratio = 4lock / containerd)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--containers", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (containerd and CNI need it)", file=sys.stderr)
        return 2
    for tool in ("containerd", "skopeo", "docker-registry"):
        if shutil.which(tool) is None:
            print(f"{tool} missing: run scripts/setup-system.sh", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="cri-bench-"))
    bridges: list[str] = []
    try:
        with running_registry(work / "registry") as reg:
            image = push(cached_images()["busybox"], reg.host).ref
            pause = push_pause(work / "pause-layout", reg.host)
            ctd = work / "containerd"
            ctd.mkdir()
            bridges.append(bridge_conf(ctd / "cni", "bctd", f"10.{random.randint(210, 219)}.1.0/24", ctd / "ipam"))
            ours = work / "4lock"
            ours.mkdir()
            bridges.append(bridge_conf(ours / "cni", "b4lk", f"10.{random.randint(220, 229)}.1.0/24", ours / "ipam"))
            cfg = containerd_config(ctd, reg.host, pause, ctd / "cni")
            run_dir = Path(f"/tmp/cri-bench-run-{os.getpid()}")
            with process(["containerd", "--config", str(cfg)], work / "containerd.log") as cproc, \
                    process([PY, str(REPO / "bench" / "cri_node.py"), "--workdir", str(ours), "--run-dir",
                             str(run_dir), "--socket", str(ours / "cri.sock"), "--registry", reg.url,
                             "--cni-conf", str(ours / "cni")], work / "4lock.log") as oproc:
                wait_socket(ctd / "containerd.sock", cproc, "containerd")
                wait_socket(ours / "cri.sock", oproc, "4lock-core CRI")
                print(f"busybox {image}; {args.iterations} iterations per mode", flush=True)
                r_ours = measure("4lock", ours / "cri.sock", image, args.iterations, args.containers)
                r_ctd = measure("containerd", ctd / "containerd.sock", image, args.iterations, args.containers)
            report(r_ours, r_ctd, args.containers)
    finally:
        for br in bridges:
            subprocess.run(["ip", "link", "del", br], capture_output=True, check=False)
        subprocess.run(["umount", "-R", str(work / "containerd" / "root")], capture_output=True, check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
