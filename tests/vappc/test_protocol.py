"""The sans-I/O codec: golden lines for every request and response shape."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.errors import Category, NotFound, VappError
from app.services.app_types import AppHandle, AppStatus, AppSummary, GroupResult, Progress
from app.vappc import protocol as p

SPEC = {
    "app_id": "web-1", "name": "web", "image": "127.0.0.1:5000/test/busybox:latest",
    "command": ["/bin/sh"], "args": ["-c", "sleep 1"], "env": ["A=1", "B=x=y"],
    "mounts": [{"host_path": "/srv", "container_path": "/data", "read_only": True}],
    "resources": {"memory_mb": 64, "cpu_cores": 0.5}, "privileged": False, "working_dir": "/",
    "template_vars": {"port": "80"},
    "config_templates": [{"template": "port={{ port }}", "destination": "/etc/app.conf"}],
    "setup_tasks": [{"name": "init", "command": ["/bin/true"]}],
}

REQUESTS = [
    ('{"cmd":"Ping"}', "Ping"),
    ('{"cmd":"Version"}', "Version"),
    ('{"cmd":"ListApps"}', "ListApps"),
    ('{"cmd":"RunDiagnostic"}', "RunDiagnostic"),
    ('{"cmd":"StopApp","data":{"app_id":"a"}}', "StopApp"),
    ('{"cmd":"AppState","data":{"app_id":"a"}}', "AppState"),
    ('{"cmd":"GetInterfaceIp","data":{"interface":"zt*"}}', "GetInterfaceIp"),
    (json.dumps({"cmd": "StartApp", "data": {"spec": SPEC}}), "StartApp"),
    (json.dumps({"cmd": "StartContainerGroup", "data": {"group": {"group_name": "g", "specs": [SPEC]}}}),
     "StartContainerGroup"),
    ('{"cmd":"UpdateDnsRecords","data":{"records":[{"ip":"10.0.0.1","hostname":"a.b"}]}}', "UpdateDnsRecords"),
]


@pytest.mark.parametrize(("line", "cmd"), REQUESTS)
def test_every_request_shape_parses(line: str, cmd: str) -> None:
    req = p.parse_request(line.encode())
    assert req.cmd == cmd and req.id is None


def test_start_app_spec_defaults_and_values() -> None:
    req = p.parse_request(json.dumps({"cmd": "StartApp", "data": {"spec": SPEC}}).encode())
    spec = req.data.spec
    assert spec.setup_tasks[0].timeout_secs == 120
    assert spec.mounts[0].read_only is True
    minimal = p.parse_request(b'{"cmd":"StartApp","data":{"spec":{"app_id":"a","name":"n","image":"i",'
                              b'"command":null,"env":null}}}').data.spec
    assert minimal.command is None and minimal.env == [] and minimal.setup_tasks == []


@pytest.mark.parametrize(("line", "needle"), [
    (b'{"cmd":"Nope"}', "unknown command 'Nope'"),
    (b'{"cmd":"Ping","extra":1}', "unknown field 'extra'"),
    (b'{"data":{}}', 'missing "cmd"'),
    (b'[1,2]', "JSON object"),
    (b'{"cmd":"StartApp","data":{"spec":{"app_id":"a","name":"n","image":"i","colour":"red"}}}',
     "data.spec.colour: unknown field"),
    (b'{"cmd":"StartApp","data":{"spec":{"app_id":"a","name":"n"}}}', "data.spec.image: Field required"),
    (b'{"cmd":"StartApp","data":{"spec":{"app_id":"a/../b","name":"n","image":"i"}}}', "data.spec.app_id"),
    (b'{"cmd":"StartApp","data":{"spec":{"app_id":"a","name":"n","image":"i","env":["NOEQ"]}}}',
     "data.spec.env"),
    (b'{"cmd":"AppState","data":{"app_id":5}}', "data.app_id"),
    (b'{"cmd":"AppState"}', '"data" must be an object'),
    (b'{"cmd":"Ping","data":{"x":1}}', "takes no data"),
    (b'{"cmd":"Ping"', "invalid JSON"),
    (b'\xff\xfe{}', "not valid UTF-8"),
    (b'{"cmd":"Ping","id":true}', '"id"'),
])
def test_bad_requests_are_config_errors_naming_the_problem(line: bytes, needle: str) -> None:
    with pytest.raises(p.RequestError) as info:
        p.parse_request(line)
    assert needle in info.value.message
    assert info.value.category is Category.CONFIG and not info.value.retryable


def test_request_id_is_kept_for_errors() -> None:
    with pytest.raises(p.RequestError) as info:
        p.parse_request(b'{"cmd":"Nope","id":"x7"}')
    assert info.value.request_id == "x7"
    assert p.parse_request(b'{"cmd":"Ping","id":3}').id == 3


def test_golden_response_lines() -> None:
    assert p.ok_line("Unit") == b'{"msg":"Ok","type":"Unit"}\n'
    assert p.progress_line(Progress(5, "pulling")) == b'{"msg":"Progress","percentage":5,"message":"pulling"}\n'
    assert p.progress_line(Progress(7, "m", "pull", "web", "t1"), 4) == (
        b'{"msg":"Progress","percentage":7,"message":"m","phase":"pull","instance_name":"web",'
        b'"task_name":"t1","id":4}\n')
    assert p.ok_line("AppHandle", p.handle_to_wire(AppHandle("a", "n"))) == (
        b'{"msg":"Ok","type":"AppHandle","data":{"app_id":"a","name":"n"}}\n')
    assert p.ok_line("AppState", p.status_to_wire(AppStatus("Running"))) == (
        b'{"msg":"Ok","type":"AppState","data":"Running"}\n')
    assert p.ok_line("AppState", p.status_to_wire(AppStatus.failed("exit code 3", 3))) == (
        b'{"msg":"Ok","type":"AppState","data":{"Failed":{"reason":"exit code 3"}}}\n')
    assert p.ok_line("AppList", [p.summary_to_wire(AppSummary("a", "n", AppStatus("Stopped")))]) == (
        b'{"msg":"Ok","type":"AppList","data":[{"app_id":"a","name":"n","state":"Stopped"}]}\n')
    assert p.ok_line("InterfaceIp", {"interface": "eth0", "ip": None}) == (
        b'{"msg":"Ok","type":"InterfaceIp","data":{"interface":"eth0","ip":null}}\n')
    assert p.ok_line("ContainerGroup", p.group_to_wire(GroupResult("g", [AppHandle("a", "n")]))) == (
        b'{"msg":"Ok","type":"ContainerGroup","data":{"group_name":"g","handles":[{"app_id":"a","name":"n"}]}}\n')
    assert p.ok_line("DnsRecordsUpdated", {"count": 2}) == (
        b'{"msg":"Ok","type":"DnsRecordsUpdated","data":{"count":2}}\n')
    assert p.error_line(NotFound("no app 'x'")) == (
        b'{"msg":"Error","category":"Runtime","message":"no app \'x\'","is_retryable":true}\n')
    err = VappError("bad template", category=Category.CONFIG, phase="render")
    assert p.error_line(err, "r1") == (
        b'{"msg":"Error","category":"Config","message":"bad template","phase":"render",'
        b'"is_retryable":false,"id":"r1"}\n')


def test_group_error_keeps_string_and_adds_detail() -> None:
    err = VappError("pull failed", category=Category.IMAGE, phase="spec[1]:pull")
    data = p.group_to_wire(GroupResult("g", [AppHandle("a", "n")], err))
    assert data["error"] == "pull failed"
    assert data["error_detail"] == {"category": "Image", "message": "pull failed",
                                    "phase": "spec[1]:pull", "is_retryable": True}


def test_responses_round_trip() -> None:
    msg = p.parse_response(p.progress_line(Progress(9, "x", instance_name="i"), 2))
    assert isinstance(msg, p.ProgressMsg) and msg.progress.instance_name == "i" and msg.id == 2
    err = p.parse_response(p.error_line(NotFound("gone", phase="stop")))
    assert isinstance(err, p.ErrorMsg) and err.phase == "stop" and err.is_retryable
    assert p.status_from_wire({"Failed": {"reason": "r"}}) == AppStatus.failed("r")


def test_progress_clamp_is_monotonic_per_instance() -> None:
    clamp = p.ProgressClamp()
    seen = [clamp(Progress(v, "", instance_name=i)).percentage
            for v, i in [(10, "a"), (5, "a"), (3, "b"), (200, "b"), (-1, None)]]
    assert seen == [10, 10, 3, 100, 0]


def test_line_decoder_splits_and_caps() -> None:
    dec = p.LineDecoder(max_line=10)
    assert dec.feed(b'ab\ncd') == [b"ab"]
    assert dec.feed(b'e\r\n\n') == [b"cde"]
    assert dec.feed(b"x" * 11) == [p.LINE_TOO_LONG]
    assert dec.feed(b"\n") == []  # after an overflow the connection is done
    dec = p.LineDecoder(max_line=10)
    assert dec.feed(b"0123456789\n" + b"y" * 11 + b"\n") == [b"0123456789", p.LINE_TOO_LONG]
    dec = p.LineDecoder()
    dec.feed(b"tail")
    assert dec.eof() == b"tail"


@given(st.lists(st.binary(max_size=40), max_size=20), st.integers(min_value=1, max_value=50))
def test_line_decoder_never_loses_bytes(chunks: list[bytes], max_line: int) -> None:
    dec = p.LineDecoder(max_line)
    out: list[bytes | p.LineTooLong] = []
    for chunk in chunks:
        out += dec.feed(chunk)
    stream = b"".join(chunks)
    if p.LINE_TOO_LONG in out:
        return
    tail = dec.eof()
    expected = [ln.rstrip(b"\r") for ln in stream.split(b"\n")[:-1] if ln.strip()]
    assert out == expected
    assert (tail or b"") == stream.split(b"\n")[-1].strip()


@given(st.binary(max_size=200))
def test_parse_request_never_crashes(line: bytes) -> None:
    with contextlib.suppress(p.RequestError):
        p.parse_request(line)
