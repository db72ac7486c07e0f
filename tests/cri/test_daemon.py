"""The CRI socket of the real daemon: pods survive a daemon crash and restart."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc
from cri_api.v1 import api_pb2 as pb
from cri_api.v1 import api_pb2_grpc as pb_grpc

from app.services import pod_process
from tests.cri.conftest import CniNet
from tests.helpers.daemon import DaemonProcess


def stub(sock: Path) -> tuple[grpc.Channel, pb_grpc.RuntimeServiceStub]:
    channel = grpc.insecure_channel(f"unix:{sock}")
    return channel, pb_grpc.RuntimeServiceStub(channel)


def test_pod_survives_daemon_kill_and_restart(tmp_path: Path, cni_net: CniNet) -> None:
    env = {"VAPP_CRI__CNI_CONF_DIR": str(cni_net.conf_dir)}
    first = DaemonProcess(tmp_path, env=env).start()
    try:
        assert stat.S_IMODE(os.stat(first.cri_socket).st_mode) == 0o660
        channel, rt = stub(first.cri_socket)
        assert rt.Version(pb.VersionRequest(), timeout=10).runtime_name == "4lock-core"
        cfg = pb.PodSandboxConfig(metadata=pb.PodSandboxMetadata(name="survivor", uid="u1", namespace="ns"))
        pod_id = rt.RunPodSandbox(pb.RunPodSandboxRequest(config=cfg), timeout=30).pod_sandbox_id
        before = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True), timeout=10)
        channel.close()
    finally:
        first.kill()
    import json

    holder = json.loads(before.info["info"])["pid"]
    assert pod_process.start_time(holder) is not None  # the holder outlived the daemon
    second = DaemonProcess(tmp_path, env=env).start()
    try:
        channel, rt = stub(second.cri_socket)
        after = rt.PodSandboxStatus(pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id), timeout=10).status
        assert after.state == pb.SANDBOX_READY and after.network.ip == before.status.network.ip
        rt.StopPodSandbox(pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        rt.RemovePodSandbox(pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=30)
        assert rt.ListPodSandbox(pb.ListPodSandboxRequest(), timeout=10).items == []
        assert pod_process.start_time(holder) is None
        channel.close()
    finally:
        second.stop()
