"""The container service as root, with real containers from the busybox image."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from app.runtime.oci.spec import ContainerSpec, MountSpec, Resources
from app.services.container_types import ContainerStatus, CreateRequest
from app.services.containers import ContainerService
from tests.runtime.conftest import log_lines

pytestmark = pytest.mark.root


def cid() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


async def run(svc: ContainerService, rootfs: Path, image_config: dict[str, Any] | None = None,
              **spec_kw: Any) -> tuple[int, list[str], list[str]]:
    spec = ContainerSpec(id=spec_kw.pop("id", None) or cid(), **spec_kw)
    info = await svc.create(CreateRequest(spec=spec, rootfs=str(rootfs), image_config=image_config))
    await svc.start(info.id)
    code = await svc.wait(info.id, 20)
    out, err = log_lines(info.log_path, "stdout"), log_lines(info.log_path, "stderr")
    await svc.remove(info.id)
    return code, out, err


async def test_exit_code_and_output_streams(service: ContainerService, rootfs: Path) -> None:
    code, out, err = await run(service, rootfs, command=("sh", "-c", "echo to-out; echo to-err >&2; exit 7"))
    assert code == 7
    assert out == ["to-out"]
    assert err == ["to-err"]


async def test_pid1_hostname_proc(service: ContainerService, rootfs: Path) -> None:
    code, out, _ = await run(service, rootfs, hostname="box1",
                             command=("sh", "-c", "echo $$; hostname; test -r /proc/self/status && echo proc"))
    assert (code, out) == (0, ["1", "box1", "proc"])


async def test_entrypoint_cmd_matrix(service: ContainerService, rootfs: Path) -> None:
    image = {"config": {"Entrypoint": ["echo", "ep"], "Cmd": ["cmd"]}}
    assert (await run(service, rootfs, image))[1] == ["ep cmd"]
    assert (await run(service, rootfs, image, args=("arg",)))[1] == ["ep arg"]
    assert (await run(service, rootfs, image, command=("echo", "own")))[1] == ["own"]
    assert (await run(service, rootfs, image, command=("echo",), args=("a", "b")))[1] == ["a b"]
    with pytest.raises(InvalidArgument, match="no command"):
        await run(service, rootfs, {"config": {}})


async def test_env_user_workdir(service: ContainerService, rootfs: Path, image_config: dict[str, Any]) -> None:
    image = {"config": {**image_config.get("config", {}), "Env": ["A=image", "B=image"], "User": "app",
                        "WorkingDir": "/home/app"}}
    code, out, _ = await run(service, rootfs, image, env=("B=spec",),
                             command=("sh", "-c", "echo $A $B; id -u; id -g; pwd"))
    assert (code, out) == (0, ["image spec", "1000", "1000", "/home/app"])
    code, out, _ = await run(service, rootfs, image, user="nobody", workdir="/tmp", command=("sh", "-c", "id -u; pwd"))
    assert out == ["65534", "/tmp"]
    with pytest.raises(InvalidArgument, match="unable to find user ghost"):
        await run(service, rootfs, image, user="ghost", command=("true",))


async def test_command_not_found_is_127(service: ContainerService, rootfs: Path) -> None:
    with pytest.raises(InvalidArgument, match="executable file not found") as info:
        await run(service, rootfs, command=("no-such-binary",))
    assert info.value.details["exit_code"] == 127
    assert await service.list() == []


async def test_readonly_mounts_and_rootfs(service: ContainerService, rootfs: Path, tmp_path: Path) -> None:
    vol = tmp_path / "ro-vol"
    vol.mkdir()
    _code, out, _ = await run(
        service, rootfs, readonly_rootfs=True, mounts=(MountSpec("/data", str(vol), readonly=True),),
        command=("sh", "-c", "touch /data/x 2>/dev/null || echo data-ro; touch /x 2>/dev/null || echo root-ro"))
    assert out == ["data-ro", "root-ro"]


async def test_capabilities_dropped(service: ContainerService, rootfs: Path) -> None:
    _code, out, _ = await run(service, rootfs, command=(
        "sh", "-c", "mount -t tmpfs none /mnt 2>/dev/null && echo mounted || echo no-mount;"
        " grep CapEff /proc/self/status; ps -o pid | wc -l"))
    assert out[0] == "no-mount"
    eff = int(out[1].split()[1], 16)
    assert not eff & (1 << 16), "CAP_SYS_MODULE must be dropped (no module loading)"
    assert not eff & (1 << 21), "CAP_SYS_ADMIN must be dropped"
    assert int(out[2]) <= 4, "host processes are visible"  # header + sh + ps + wc


async def test_volume_persists(service: ContainerService, rootfs: Path, tmp_path: Path) -> None:
    vol = tmp_path / "vol"
    vol.mkdir()
    mount = (MountSpec("/vol", str(vol)),)
    await run(service, rootfs, mounts=mount, command=("sh", "-c", "echo kept > /vol/f"))
    _code, out, _ = await run(service, rootfs, mounts=mount, command=("cat", "/vol/f"))
    assert out == ["kept"]


async def test_exec_env_cwd_and_timeout(service: ContainerService, rootfs: Path) -> None:
    spec = ContainerSpec(id=cid(), command=("sleep", "60"), env=("FOO=bar",), workdir="/tmp")
    info = await service.create(CreateRequest(spec=spec, rootfs=str(rootfs)))
    await service.start(info.id)
    result = await service.exec(info.id, ["sh", "-c", "echo $FOO; pwd; echo $$; cat /proc/1/cmdline"], 10)
    assert result.exit_code == 0
    lines = result.stdout.decode().split("\n")
    assert lines[:2] == ["bar", "/tmp"] and lines[3].startswith("sleep")
    slow = await service.exec(info.id, ["sleep", "30"], 0.5)
    assert slow.timed_out and slow.exit_code == 137
    missing = await service.exec(info.id, ["nope"], 5)
    assert missing.exit_code == 127 and b"executable file not found" in missing.stderr
    await service.stop(info.id, 1)
    await service.remove(info.id)


async def test_stop_grace_then_kill(service: ContainerService, rootfs: Path) -> None:
    polite = ContainerSpec(id=cid(), command=("sh", "-c", "trap 'exit 3' TERM; while true; do sleep 0.1; done"))
    info = await service.create(CreateRequest(spec=polite, rootfs=str(rootfs)))
    await service.start(info.id)
    await asyncio.sleep(0.3)
    stopped = await service.stop(info.id, 5)
    assert stopped.status == ContainerStatus.EXITED and stopped.exit_code == 3
    stubborn = ContainerSpec(id=cid(), command=("sh", "-c", "trap '' TERM; while true; do sleep 0.1; done"))
    info = await service.create(CreateRequest(spec=stubborn, rootfs=str(rootfs)))
    await service.start(info.id)
    await asyncio.sleep(0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    stopped = await service.stop(info.id, 1)
    assert stopped.exit_code == 137 and 0.9 < loop.time() - t0 < 5


async def test_errors_leave_state_intact(service: ContainerService, rootfs: Path) -> None:
    spec = ContainerSpec(id=cid(), command=("sleep", "30"))
    info = await service.create(CreateRequest(spec=spec, rootfs=str(rootfs)))
    with pytest.raises(AlreadyExists):
        await service.create(CreateRequest(spec=spec, rootfs=str(rootfs)))
    with pytest.raises(InvalidArgument, match="does not exist"):
        await service.create(CreateRequest(spec=ContainerSpec(id=cid(), command=("true",)), rootfs="/nonexistent"))
    with pytest.raises(FailedPrecondition):
        await service.exec(info.id, ["true"], 5)  # created, not running
    await service.start(info.id)
    with pytest.raises(FailedPrecondition):
        await service.start(info.id)
    with pytest.raises(FailedPrecondition):
        await service.remove(info.id)
    assert (await service.inspect(info.id)).status == ContainerStatus.RUNNING
    await service.remove(info.id, force=True)
    with pytest.raises(NotFound):
        await service.inspect(info.id)


async def test_shared_netns_loopback(service: ContainerService, rootfs: Path, tmp_path: Path) -> None:
    server = ContainerSpec(id=cid(), network="new", command=("sh", "-c", "echo pong | nc -l -p 7070"))
    s = await service.create(CreateRequest(spec=server, rootfs=str(rootfs)))
    await service.start(s.id)
    await asyncio.sleep(0.3)
    _code, out, err = await run(service, rootfs, network=f"container:{s.id}",
                               command=("sh", "-c", "echo ping | nc 127.0.0.1 7070"))
    assert out == ["pong"], err
    await service.remove(s.id, force=True)


async def test_memory_limit_oom_kills(service: ContainerService, rootfs: Path) -> None:
    code, _, _ = await run(service, rootfs, resources=Resources(memory_bytes=32 * 1024 * 1024),
                           command=("sh", "-c", "dd if=/dev/zero of=/dev/null bs=200M count=1"))
    assert code == 137


async def test_events_stream(service: ContainerService, rootfs: Path) -> None:
    seen: list[tuple[str, int | None]] = []

    async def collect() -> None:
        async for event in service.events():
            seen.append((event.type, event.exit_code))
            if event.type == "deleted":
                return

    task = asyncio.create_task(collect())
    await asyncio.sleep(0)
    await run(service, rootfs, command=("sh", "-c", "exit 4"))
    await asyncio.wait_for(task, 10)
    assert seen == [("created", None), ("started", None), ("exited", 4), ("deleted", None)]


@pytest.mark.parametrize("runtime", ["crun", "runc"])
async def test_external_runtimes_same_bundle(service: ContainerService, rootfs: Path, runtime: str) -> None:
    spec = ContainerSpec(id=cid(), command=("sh", "-c", "echo via-$0; sleep 30"), args=None)
    info = await service.create(CreateRequest(spec=spec, rootfs=str(rootfs), runtime=runtime))
    await service.start(info.id)
    result = await service.exec(info.id, ["sh", "-c", "echo $$; hostname"], 10)
    assert result.exit_code == 0, result.stderr
    stopped = await service.stop(info.id, 0.5)
    assert stopped.exit_code == 137
    assert log_lines(info.log_path, "stdout") == ["via-sh"]
    await service.remove(info.id)
    assert service.backends[runtime].state(info.id) is None


async def test_exec_tty_and_stdin(service: ContainerService, rootfs: Path) -> None:
    info = await service.create(CreateRequest(spec=ContainerSpec(id=cid(), command=("sleep", "30")),
                                              rootfs=str(rootfs)))
    await service.start(info.id)
    session = await service.exec_stream(info.id, ["sh", "-c", "tty; echo on-tty"], tty=True)
    assert session.pty is not None
    code = await session.wait(10)
    data = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(session.pty, 4096):
            data += chunk
    session.close()
    assert code == 0 and b"/dev/pts/" in data and b"on-tty" in data
    session = await service.exec_stream(info.id, ["cat"], stdin=True)
    loop = asyncio.get_running_loop()
    assert session.stdin is not None and session.stdout is not None
    await loop.sock_sendall(session.stdin, b"echoed\n")
    session.stdin.shutdown(socket.SHUT_WR)
    assert await session.wait(10) == 0
    assert await loop.sock_recv(session.stdout, 100) == b"echoed\n"
    session.close()
    await service.remove(info.id, force=True)


async def test_shim_killed_container_still_tracked(service: ContainerService, rootfs: Path) -> None:
    info = await service.create(CreateRequest(spec=ContainerSpec(id=cid(), command=("sleep", "30")),
                                              rootfs=str(rootfs)))
    await service.start(info.id)
    row = service._row(info.id)
    assert row.shim_pid and row.pid
    os.kill(row.shim_pid, signal.SIGKILL)
    await asyncio.sleep(0.2)
    assert (await service.inspect(info.id)).status == ContainerStatus.RUNNING  # the init is what counts
    os.kill(row.pid, signal.SIGKILL)
    assert await service.wait(info.id, 10) == 255  # nobody left to record the code: "unknown"
    await service.remove(info.id)


async def test_runtime_default_seccomp(service: ContainerService, rootfs: Path) -> None:
    _code, out, _ = await run(service, rootfs, seccomp="runtime/default", command=(
        "sh", "-c", "grep Seccomp: /proc/self/status; unshare -U true 2>/dev/null || echo no-unshare"))
    assert out == ["Seccomp:\t2", "no-unshare"]


@pytest.mark.parametrize("tty", [False, True], ids=["pipe", "tty"])
async def test_attach_stdin(service: ContainerService, rootfs: Path, tty: bool) -> None:
    command = ("sh", "-c", "read line; echo got-$line") if tty else ("cat",)
    spec = ContainerSpec(id=cid(), command=command, stdin=True, stdin_once=True, tty=tty)
    info = await service.create(CreateRequest(spec=spec, rootfs=str(rootfs)))
    await service.start(info.id)
    sock = await service.attach_stdin(info.id)
    await asyncio.get_running_loop().sock_sendall(sock, b"hello\n")
    sock.close()  # stdin_once: the first client's EOF closes the container's stdin
    assert await service.wait(info.id, 10) == 0
    out = log_lines(info.log_path, "stdout")
    assert any(line.strip() == ("got-hello" if tty else "hello") for line in out), out
    await service.remove(info.id)


async def test_overlay_rootfs_mounted_by_the_init(service: ContainerService, rootfs: Path, tmp_path: Path) -> None:
    """An overlay description is mounted by the native init in the container's mount namespace only;
    crun/runc would ignore the annotation, so the service refuses it for them."""
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    overlay = {"type": "overlay", "source": "overlay",
               "options": [f"lowerdir={rootfs}", f"upperdir={upper}", f"workdir={work}"]}
    spec = ContainerSpec(id=cid(), command=("sh", "-c", "echo hi > /new; cat /new"))
    before = sorted(p.name for p in rootfs.iterdir())
    with pytest.raises(FailedPrecondition, match="native runtime"):
        await service.create(CreateRequest(spec=spec, rootfs=str(merged), rootfs_overlay=overlay, runtime="crun"))
    assert await service.list() == []
    info = await service.create(CreateRequest(spec=spec, rootfs=str(merged), rootfs_overlay=overlay))
    await service.start(info.id)
    assert await service.wait(info.id, 20) == 0
    assert log_lines(info.log_path, "stdout") == ["hi"]
    await service.remove(info.id)
    assert (upper / "new").read_text() == "hi\n"  # the write landed in the upper dir
    assert not (rootfs / "new").exists() and sorted(p.name for p in rootfs.iterdir()) == before
    assert not os.path.ismount(merged) and os.listdir(merged) == []  # never mounted on the host
