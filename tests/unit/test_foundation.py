"""Ground floor: settings, secret redaction, error mapping, Unix socket binding."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from pathlib import Path

import pytest

from app.config import load_settings, parse_host_port
from app.errors import HTTP_STATUS, AlreadyExists, Category, InvalidArgument, Kind, NotFound, VappError
from app.logs import JsonFormatter, RedactFilter, redact


def test_defaults_for_root_and_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith("VAPP_"):
            monkeypatch.delenv(key)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    s = load_settings()
    assert s.state_dir == Path("/var/lib/vapp") and s.run_dir == Path("/run/vapp")
    assert s.db_url == "sqlite:////var/lib/vapp/vapp.db"
    assert s.cri_socket == Path("/run/vapp/cri.sock")
    assert s.vappc.socket == Path("/tmp/vappc")
    monkeypatch.setattr(os, "geteuid", lambda: 1234)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    s = load_settings()
    assert s.state_dir == tmp_path / "data" / "vapp-core"
    assert s.run_dir == tmp_path / "vapp"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "missing"))
    assert load_settings().run_dir == Path("/tmp/vapp-1234")


def test_env_over_file_over_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('admin_listen = "127.0.0.1:9000"\n[runtime]\nstop_grace_seconds = 3\n')
    monkeypatch.setenv("VAPP_RUNTIME__DEFAULT_RUNTIME", "crun")
    s = load_settings(cfg)
    assert s.admin_listen == "127.0.0.1:9000"
    assert s.runtime.stop_grace_seconds == 3
    assert s.runtime.default_runtime == "crun"
    # explicit overrides (CLI flags) win over everything
    assert load_settings(cfg, admin_listen="127.0.0.1:1").admin_listen == "127.0.0.1:1"
    # sections merge key by key across all three sources
    cfg.write_text("[vappc]\nmax_line_bytes = 7\n[runtime]\nstop_grace_seconds = 3\n")
    s = load_settings(cfg, vappc={"socket": "/x.sock"})
    assert (s.vappc.max_line_bytes, str(s.vappc.socket)) == (7, "/x.sock")
    assert (s.runtime.stop_grace_seconds, s.runtime.default_runtime) == (3, "crun")


@pytest.mark.parametrize(
    ("text", "key"),
    [("socket_mode = 4096", "socket_mode"), ("[blob]\nnope = 1", "blob.nope"), ("admin_listen = 'x'", "admin_listen")],
)
def test_invalid_file_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(InvalidArgument) as err:
        load_settings(cfg)
    assert key in err.value.message
    assert err.value.details["errors"][0]["key"] == key


def test_secrets_are_masked_in_dumps() -> None:
    s = load_settings(admin_token="s3cr3t-token", blob={"upstreams": {"docker.io": {"password": "hunter2"}}})
    dumped = json.dumps(s.model_dump(mode="json"))
    assert "s3cr3t-token" not in dumped and "hunter2" not in dumped


def test_parse_host_port() -> None:
    assert parse_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_host_port("[::1]:5050") == ("::1", 5050)
    assert parse_host_port(":8") == ("127.0.0.1", 8)
    for bad in ("host", "h:99999", "h:x"):
        with pytest.raises(ValueError):
            parse_host_port(bad)


@pytest.mark.parametrize(
    ("raw", "secret"),
    [
        ("Authorization: Bearer abcdefghijklmnop", "abcdefghijklmnop"),
        ("GET https://user:pa55word@registry.example/v2/", "pa55word"),
        ('{"password": "hunter2"}', "hunter2"),
        ("token=zzz-yyy-xxx", "zzz-yyy-xxx"),
    ],
)
def test_redaction(raw: str, secret: str) -> None:
    assert secret not in redact(raw)


def test_log_records_are_redacted_and_json() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "auth %s", ("Bearer abcdefghijkl",), None)
    RedactFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert "abcdefghijkl" not in line["msg"] and line["level"] == "info"


def test_error_kinds_map_to_http_and_categories() -> None:
    assert set(HTTP_STATUS) == set(Kind)
    err = NotFound("no container x", category=Category.RUNTIME, phase="start")
    assert err.to_dict() == {"kind": "not_found", "category": "Runtime", "message": "no container x", "phase": "start"}
    assert err.retryable and not InvalidArgument("bad").retryable
    assert VappError("x").with_phase("a").with_phase("b").phase == "a"  # the deepest phase wins


def test_bind_unix_socket_mode_and_stale_handling(tmp_path: Path) -> None:
    from app.api.sockets import bind_unix_socket, clear_stale_socket

    path = tmp_path / "s" / "x.sock"
    sock = bind_unix_socket(path, 0o660)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    with pytest.raises(AlreadyExists):
        bind_unix_socket(path, 0o660)  # live: never stolen
    sock.close()
    again = bind_unix_socket(path, 0o600)  # stale: replaced
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again.close()
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(InvalidArgument):
        clear_stale_socket(regular)
    with pytest.raises(InvalidArgument):
        bind_unix_socket(tmp_path / "g.sock", 0o660, group="no-such-group-xyz")
    s = socket.socket(socket.AF_UNIX)
    s.close()
