"""What can be validated here of the image, compose file and systemd unit.

No container builder or systemd runs on this machine, so: the files are parsed
and cross-checked against the repository and the real CLI/settings, and the
entrypoint script is run for real (as root and as the unprivileged user).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from app.cli import build_parser
from tests.helpers.users import UnprivUser, run_as

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "docker" / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
UNIT = REPO / "packaging" / "systemd" / "vapp-core.service"
VENV_BIN = "/opt/vapp/venv/bin/vapp-core"


# ---- Dockerfile ----------------------------------------------------------------------
def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    return out


def stages(instructions: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr in instructions:
        if instr[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instr)
    return result


def env_pairs(args: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in shlex.split(args))


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def test_dockerfile_copy_sources_exist(dockerfile: list[tuple[str, str]]) -> None:
    copies = [args for kw, args in dockerfile if kw == "COPY"]
    assert copies
    for args in copies:
        parts = shlex.split(args)
        if any(p.startswith("--from=") for p in parts):
            continue
        sources = [p for p in parts if not p.startswith("--")][:-1]
        for src in sources:
            assert (REPO / src).exists(), f"COPY source {src} missing"


def test_dockerfile_stages(dockerfile: list[tuple[str, str]]) -> None:
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for kw, a in dockerfile if kw == "ARG" and "=" in a}
    parts = stages(dockerfile)
    assert len(parts) >= 2, "multi-stage build"
    final = parts[-1]
    base = final[0][1].split()[0].replace("${DEBIAN_IMAGE}", args["DEBIAN_IMAGE"])
    assert base == "debian:bookworm-slim"
    installs = " ".join(a for kw, a in final if kw == "RUN" and "apt-get install" in a).split()
    for pkg in ("passt", "uidmap", "iproute2", "ca-certificates", "crun", "fuse-overlayfs", "python3"):
        assert pkg in installs, pkg
    kws = {kw: a for kw, a in final}
    assert kws["USER"] == "vapp"
    assert set(kws["EXPOSE"].split()) == {"8420", "5050"}
    assert json.loads(kws["VOLUME"]) == ["/var/lib/vapp"]
    entry = json.loads(kws["ENTRYPOINT"])
    copied = [shlex.split(a)[-1] for kw, a in final if kw == "COPY"]
    assert entry[-1] in copied, "the entrypoint is the copied script"
    setup = " ".join(a for kw, a in final if kw == "RUN")
    assert "/etc/subuid" in setup and "/etc/subgid" in setup
    build_stage = " ".join(a for kw, a in parts[0] if kw in ("RUN", "ENV"))
    assert "uv sync --frozen --no-dev" in build_stage and "UV_PROJECT_ENVIRONMENT=/opt/vapp/venv" in build_stage


def _vapp_core_config(env: dict[str, str], *args: str) -> dict[str, object]:
    """The effective settings the real CLI derives from ``env`` (unknown keys fail)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAPP_")}
    clean.update(env)
    proc = subprocess.run([str(REPO / ".venv/bin/vapp-core"), "config", *args], env=clean,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def test_dockerfile_env_is_valid_configuration(dockerfile: list[tuple[str, str]]) -> None:
    final = stages(dockerfile)[-1]
    env: dict[str, str] = {}
    for kw, args in final:
        if kw == "ENV":
            env.update(env_pairs(args))
    vapp = {k: v for k, v in env.items() if k.startswith("VAPP_")}
    settings = _vapp_core_config(vapp)
    assert settings["admin_listen"] == "0.0.0.0:8420"
    assert settings["state_dir"] == "/var/lib/vapp" and settings["run_dir"] == "/run/vapp"
    assert settings["blob"]["listen"] == "0.0.0.0:5050"  # type: ignore[index]
    assert settings["vappc"]["socket"] == "/run/vapp/vappc"  # type: ignore[index]
    assert env["PATH"].startswith("/opt/vapp/venv/bin:")


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = (REPO / "docker" / "Dockerfile.dockerignore").read_text().split()
    for entry in (".git", ".venv", ".test-work"):
        assert entry in ignored


# ---- compose -------------------------------------------------------------------------
def interpolate_defaults(text: str) -> str:
    """Compose's ``${VAR:-default}`` with nothing set: the defaults."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_compose_file() -> None:
    path = REPO / "compose" / "compose.yaml"
    doc = yaml.safe_load(interpolate_defaults(path.read_text()))
    service = doc["services"]["vapp-core"]
    context = (path.parent / service["build"]["context"]).resolve()
    assert context == REPO and (context / service["build"]["dockerfile"]) == DOCKERFILE
    mounts = dict(v.split(":")[:2] for v in service["volumes"])
    assert mounts == {"vapp-state": "/var/lib/vapp", "/run/vapp": "/run/vapp"}
    assert doc["services"]["vapp-core"]["image"] == "vapp-core:dev"
    assert "vapp-state" in doc["volumes"]
    assert {p.rsplit(":", 1)[-1] for p in service["ports"]} == {"8420", "5050"}
    assert all(p.startswith("127.0.0.1:") for p in service["ports"])
    assert set(service["devices"]) == {"/dev/fuse", "/dev/net/tun"}
    assert "privileged" not in service


# ---- systemd -------------------------------------------------------------------------
def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key), f"bad line {line!r}"
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_unit_required_keys(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = unit["Service"]
    expected = {"Type": "notify", "User": "vapp", "RuntimeDirectory": "vapp", "StateDirectory": "vapp",
                "Restart": "on-failure", "Delegate": "yes", "KillMode": "process"}
    for key, value in expected.items():
        assert svc.get(key) == [value], key
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    for forbidden in ("PrivateUsers", "RestrictNamespaces", "NoNewPrivileges", "CapabilityBoundingSet",
                      "ProtectKernelTunables", "PrivateDevices", "RestrictSUIDSGID", "SystemCallFilter",
                      "DeviceAllow", "ProtectClock", "PrivateTmp"):
        assert svc.get(forbidden, ["no"]) == ["no"], f"{forbidden} breaks rootless containers"


def test_unit_execstart_parses_with_the_real_cli(unit: dict[str, dict[str, list[str]]]) -> None:
    argv = shlex.split(unit["Service"]["ExecStart"][0])
    assert argv[0] == VENV_BIN
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert Path(argv[0]).name in scripts
    args = build_parser().parse_args(argv[1:])
    assert args.command == "daemon" and str(args.config) == "/etc/vapp-core/config.toml"


def test_unit_environment_is_valid_configuration(unit: dict[str, dict[str, list[str]]], tmp_path: Path) -> None:
    env = dict(v.split("=", 1) for v in unit["Service"]["Environment"])
    empty = tmp_path / "config.toml"
    empty.write_text("")  # what vapp-core.tmpfiles creates
    settings = _vapp_core_config(env, "--config", str(empty))
    assert settings["state_dir"] == "/var/lib/vapp" and settings["run_dir"] == "/run/vapp"
    assert settings["socket_group"] == "vappc" and settings["log_format"] == "json"


def test_sysusers_and_tmpfiles_agree_with_the_unit(unit: dict[str, dict[str, list[str]]]) -> None:
    sysusers = [shlex.split(line) for line in (REPO / "packaging/systemd/vapp-core.sysusers").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    assert {row[0] for row in sysusers} <= {"u", "g", "m", "r"}
    users = {row[1]: row for row in sysusers if row[0] == "u"}
    groups = {row[1] for row in sysusers if row[0] in ("g", "u")}
    svc = unit["Service"]
    assert svc["User"][0] in users and users["vapp"][4] == "/var/lib/vapp"
    assert set(svc["SupplementaryGroups"][0].split()) <= groups
    assert ["m", "vapp", "vappc"] in sysusers
    tmpfiles = [line.split() for line in (REPO / "packaging/systemd/vapp-core.tmpfiles").read_text()
                .splitlines() if line.strip() and not line.startswith("#")]
    for row in tmpfiles:
        assert row[0] in {"d", "f", "x", "z", "L"} and row[1].startswith("/"), row
        if row[0] in ("d", "f"):
            assert len(row) >= 5 and re.fullmatch(r"0[0-7]{3}", row[2]) and row[4] in groups | {"root"}
    created = {row[1] for row in tmpfiles if row[0] == "f"}
    assert shlex.split(svc["ExecStart"][0])[-1] in created  # --config file always exists


# ---- entrypoint (run for real) -------------------------------------------------------
@pytest.fixture
def sandbox() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vapp-entrypoint-test-"))
    path.chmod(0o755)
    fake = path / "vapp-core"
    fake.write_text('#!/bin/sh\necho "uid=$(id -u) args=$*"\n')
    fake.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _entry_env(sandbox: Path, **extra: str) -> dict[str, str]:
    return {"VAPP_BIN": str(sandbox / "vapp-core"), "VAPP_STATE_DIR": str(sandbox / "state"),
            "VAPP_RUN_DIR": str(sandbox / "run"), **extra}


def test_entrypoint_dispatch_as_unprivileged(unpriv_user: UnprivUser, sandbox: Path) -> None:
    for d in ("state", "run"):
        (sandbox / d).mkdir()
        os.chown(sandbox / d, unpriv_user.uid, unpriv_user.gid)
    env = _entry_env(sandbox)
    cases = {
        (): f"uid={unpriv_user.uid} args=daemon",
        ("--log-level", "debug"): f"uid={unpriv_user.uid} args=daemon --log-level debug",
        ("check", "--json"): f"uid={unpriv_user.uid} args=check --json",
        ("echo", "hello"): "hello",
    }
    for argv, expected in cases.items():
        proc = run_as(unpriv_user, ["sh", str(ENTRYPOINT), *argv], env=env, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == expected, argv


def test_entrypoint_refuses_unwritable_dirs(unpriv_user: UnprivUser, sandbox: Path) -> None:
    (sandbox / "state").mkdir()  # root-owned 0755: not writable by the user
    proc = run_as(unpriv_user, ["sh", str(ENTRYPOINT)], env=_entry_env(sandbox), timeout=30)
    assert proc.returncode == 1
    assert f"{sandbox / 'state'} is not writable by uid {unpriv_user.uid}" in proc.stderr


def test_entrypoint_as_root_fixes_ownership_and_drops(unpriv_user: UnprivUser, sandbox: Path) -> None:
    env = {**os.environ, **_entry_env(sandbox, VAPP_USER=unpriv_user.name)}
    proc = subprocess.run(["sh", str(ENTRYPOINT), "check"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"uid={unpriv_user.uid} args=check"
    for d in ("state", "run"):
        assert (sandbox / d).stat().st_uid == unpriv_user.uid
    rootful = subprocess.run(["sh", str(ENTRYPOINT)], env={**env, "VAPP_ROOTFUL": "1"},
                             capture_output=True, text=True, timeout=30)
    assert rootful.stdout.strip() == "uid=0 args=daemon"
