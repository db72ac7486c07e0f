"""Bundle generation (pure): command matrix, env, users, mounts, caps, namespaces, resources."""

from __future__ import annotations

import pytest

from app.errors import InvalidArgument
from app.runtime.kernel.caps import CAP_NAMES, DEFAULT_CAPS
from app.runtime.oci import spec as S

PASSWD = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"
GROUP = "root:x:0:\napp:x:1000:\nwheel:x:10:app\ndocker:x:999:app,other\nnogroup:x:65534:\n"


def build(image: dict | None = None, **kw: object) -> dict:
    spec = S.ContainerSpec(id=str(kw.pop("id", "abc123def4567890")), **kw)  # type: ignore[arg-type]
    return S.build_config(spec, image, passwd=PASSWD, group=GROUP)


@pytest.mark.parametrize(
    ("entrypoint", "cmd", "command", "args", "expected"),
    [
        (["/ep"], ["c1"], None, None, ["/ep", "c1"]),
        (["/ep"], ["c1"], None, ("a",), ["/ep", "a"]),
        (["/ep"], ["c1"], ("x",), None, ["x"]),
        (["/ep"], ["c1"], ("x",), ("a", "b"), ["x", "a", "b"]),
        (None, ["c1", "c2"], None, None, ["c1", "c2"]),
        (None, ["c1"], None, ("a",), ["a"]),
        (["/ep"], None, None, None, ["/ep"]),
    ],
)
def test_command_matrix(entrypoint, cmd, command, args, expected) -> None:  # type: ignore[no-untyped-def]
    image = {"config": {"Entrypoint": entrypoint, "Cmd": cmd}}
    assert S.resolve_args(S.image_section(image), command, args) == expected


def test_no_command_is_an_error_not_sh() -> None:
    with pytest.raises(InvalidArgument, match="no command"):
        build({"config": {}})


def test_env_merge_and_path_default() -> None:
    assert S.merge_env(["A=1", "B=2"], ("B=3", "C")) == [
        "A=1", "B=3", "C=", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert S.merge_env(["PATH=/x"], ())[0] == "PATH=/x"
    with pytest.raises(InvalidArgument):
        S.merge_env(["=bad"], ())


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, {"uid": 0, "gid": 0}),
        ("app", {"uid": 1000, "gid": 1000, "additionalGids": [10, 999]}),
        ("1000", {"uid": 1000, "gid": 1000, "additionalGids": [10, 999]}),
        ("app:wheel", {"uid": 1000, "gid": 10}),
        ("4242", {"uid": 4242, "gid": 0}),
        ("4242:77", {"uid": 4242, "gid": 77}),
        ("nobody", {"uid": 65534, "gid": 65534}),
    ],
)
def test_resolve_user(user: str | None, expected: dict) -> None:
    assert S.resolve_user(user, PASSWD, GROUP) == expected


def test_unknown_user_and_group() -> None:
    with pytest.raises(InvalidArgument, match="unable to find user ghost"):
        S.resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(InvalidArgument, match="unable to find group nope"):
        S.resolve_user("app:nope", PASSWD, GROUP)


def test_image_user_workdir_and_spec_override() -> None:
    image = {"config": {"Cmd": ["sh"], "User": "app", "WorkingDir": "/srv", "Env": ["X=1"]}}
    cfg = build(image)
    assert cfg["process"]["user"]["uid"] == 1000 and cfg["process"]["cwd"] == "/srv"
    cfg = build(image, user="root", workdir="/tmp")
    assert cfg["process"]["user"] == {"uid": 0, "gid": 0} and cfg["process"]["cwd"] == "/tmp"


def test_default_container_is_confined() -> None:
    cfg = build({"config": {"Cmd": ["sh"]}})
    proc, linux = cfg["process"], cfg["linux"]
    assert proc["capabilities"]["bounding"] == [c for c in CAP_NAMES if c in DEFAULT_CAPS]
    assert "CAP_SYS_ADMIN" not in proc["capabilities"]["effective"]
    assert proc["noNewPrivileges"] is True
    assert "/proc/kcore" in linux["maskedPaths"] and "/proc/sys" in linux["readonlyPaths"]
    types = [ns["type"] for ns in linux["namespaces"]]
    assert {"pid", "ipc", "uts", "mount", "cgroup"} <= set(types) and "network" not in types  # host network
    dests = [m["destination"] for m in cfg["mounts"]]
    assert dests[:6] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys"]
    sys_mount = cfg["mounts"][5]
    assert sys_mount["type"] == "none" and "ro" in sys_mount["options"]  # host netns: bind, read-only
    assert cfg["hostname"] == "abc123def456"
    assert "cgroupsPath" not in linux  # no limits asked: no cgroup of its own


def test_network_modes() -> None:
    own = build({"config": {"Cmd": ["sh"]}}, network="new")
    assert {"type": "network"} in own["linux"]["namespaces"]
    assert next(m for m in own["mounts"] if m["destination"] == "/sys")["type"] == "sysfs"
    joined = build({"config": {"Cmd": ["sh"]}}, network="/run/netns/x")
    assert {"type": "network", "path": "/run/netns/x"} in joined["linux"]["namespaces"]
    with pytest.raises(InvalidArgument, match="network mode"):
        build({"config": {"Cmd": ["sh"]}}, network="bogus")


def test_privileged_and_caps() -> None:
    cfg = build({"config": {"Cmd": ["sh"]}}, privileged=True)
    assert cfg["process"]["capabilities"]["bounding"] == list(CAP_NAMES)
    assert "maskedPaths" not in cfg["linux"] and cfg["process"]["noNewPrivileges"] is False
    assert cfg["linux"]["devices"][0]["path"] == "/dev/net/tun"
    caps = S.capabilities(False, ("NET_ADMIN",), ("chown",))
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps
    assert S.capabilities(False, (), ("ALL",)) == []
    with pytest.raises(InvalidArgument, match="unknown capability"):
        S.capabilities(False, ("CAP_FLY",), ())
    with pytest.raises(InvalidArgument, match="root"):
        S.build_config(S.ContainerSpec(id="x", command=("sh",), privileged=True), None, host_uid=1000)


def test_mounts_volumes_tmpfs_etc_files() -> None:
    cfg = build({"config": {"Cmd": ["sh"]}}, mounts=(
        S.MountSpec("/data", "/srv/vol", readonly=True), S.MountSpec("/scratch", type="tmpfs")),
        etc_files={"/etc/hosts": "/state/hosts"})
    by_dest = {m["destination"]: m for m in cfg["mounts"]}
    assert by_dest["/data"]["options"] == ["rbind", "ro"] and by_dest["/data"]["source"] == "/srv/vol"
    assert by_dest["/scratch"]["type"] == "tmpfs"
    assert by_dest["/etc/hosts"]["source"] == "/state/hosts"
    with pytest.raises(InvalidArgument, match="absolute"):
        build({"config": {"Cmd": ["sh"]}}, mounts=(S.MountSpec("rel", "/x"),))


def test_rootless_user_namespace_and_maps() -> None:
    spec = S.ContainerSpec(id="x", command=("sh",))
    cfg = S.build_config(spec, None, host_uid=1001, host_gid=1001)
    assert {"type": "user"} in cfg["linux"]["namespaces"]
    assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": 1001, "size": 1}]
    spec = S.ContainerSpec(id="x", command=("sh",), uid_maps=(S.IdMap(0, 1001, 1), S.IdMap(1, 100000, 65536)))
    cfg = S.build_config(spec, None, host_uid=1001, host_gid=1001)
    assert cfg["linux"]["uidMappings"][1] == {"containerID": 1, "hostID": 100000, "size": 65536}
    assert "gid=5" not in " ".join(cfg["mounts"][2]["options"])


def test_resources_and_stop_signal() -> None:
    cfg = build({"config": {"Cmd": ["sh"], "StopSignal": "SIGQUIT"}},
                resources=S.Resources(memory_bytes=1 << 20, cpu_quota=50000, cpu_period=100000, pids_limit=10))
    assert cfg["linux"]["resources"] == {"memory": {"limit": 1 << 20}, "cpu": {"quota": 50000, "period": 100000},
                                         "pids": {"limit": 10}}
    assert cfg["annotations"]["org.opencontainers.image.stopSignal"] == "SIGQUIT"
    assert cfg["linux"]["cgroupsPath"] == "/vapp/abc123def4567890"
    assert S.stop_signal(S.ContainerSpec(id="x"), None) == "SIGTERM"


def test_seccomp_choices() -> None:
    assert "seccomp" not in build({"config": {"Cmd": ["sh"]}})["linux"]  # unconfined by default (CRI)
    cfg = build({"config": {"Cmd": ["sh"]}}, seccomp="runtime/default")
    assert "mount" in cfg["linux"]["seccomp"]["syscalls"][0]["names"]
    assert "seccomp" not in build({"config": {"Cmd": ["sh"]}}, seccomp="runtime/default", privileged=True)["linux"]
    custom = {"defaultAction": "SCMP_ACT_ERRNO"}
    assert build({"config": {"Cmd": ["sh"]}}, seccomp=custom)["linux"]["seccomp"] == custom
    with pytest.raises(InvalidArgument):
        build({"config": {"Cmd": ["sh"]}}, seccomp="bogus")
