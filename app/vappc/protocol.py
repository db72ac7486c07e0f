"""The vappc wire protocol, sans I/O: bytes in, requests out; results in, lines out.

Framing (NDJSON, one JSON object per ``\\n``-terminated line)::

    client                                   daemon
      {"cmd":"StartApp","data":{...}}  ──►
                                       ◄──  {"msg":"Progress","percentage":5,"message":"pulling"}
                                       ◄──  ... zero or more Progress lines ...
                                       ◄──  {"msg":"Ok","type":"AppHandle","data":{...}}   (or "Error")
      {"cmd":"Ping"}                   ──►  (the next request on the same connection)
                                       ◄──  {"msg":"Ok","type":"Unit"}

Extension (protocol 2, announced by ``Version``): a request may carry ``"id"``
(string or integer). Every line answering it then carries the same ``"id"`` and
the daemon handles such requests concurrently, so their lines interleave; lines
without ``id`` keep the original strictly-in-order contract.

Nothing here touches a socket: :class:`LineDecoder` splits a byte stream into
capped lines, :func:`parse_request` validates one line into a :class:`Request`
(raising :class:`RequestError`, an ``InvalidArgument``), the ``*_line``
functions encode responses, and :func:`parse_response` decodes them for clients.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.errors import Category, InvalidArgument, VappError
from app.services.app_types import (
    AppHandle,
    AppSpec,
    AppStatus,
    AppSummary,
    ContainerGroup,
    DnsRecord,
    GroupResult,
    Progress,
)

PROTOCOL_VERSION = 2
FEATURES = ("version", "request_id", "network_mode", "group_shared_network", "stop_timeout", "intents")
DEFAULT_MAX_LINE = 1024 * 1024
RequestId = str | int


# --- framing --------------------------------------------------------------------------
class LineTooLong:
    """Marker event: the peer sent more than ``max_line`` bytes without a newline."""

    def __repr__(self) -> str:
        return "LineTooLong()"


LINE_TOO_LONG = LineTooLong()


class LineDecoder:
    """Split a byte stream into lines of at most ``max_line`` bytes (newline excluded)."""

    def __init__(self, max_line: int = DEFAULT_MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._overflowed = False

    def feed(self, data: bytes) -> list[bytes | LineTooLong]:
        if self._overflowed:
            return []
        self._buf += data
        if b"\n" not in data:
            return [LINE_TOO_LONG] if self._check_overflow() else []
        *lines, rest = self._buf.split(b"\n")
        self._buf = bytearray(rest)
        out: list[bytes | LineTooLong] = []
        for line in lines:
            if len(line) > self.max_line:
                self._overflowed = True
                self._buf.clear()
                out.append(LINE_TOO_LONG)
                return out
            if line.strip():
                out.append(bytes(line.rstrip(b"\r")))
        if self._check_overflow():
            out.append(LINE_TOO_LONG)
        return out

    def _check_overflow(self) -> bool:
        if len(self._buf) > self.max_line:
            self._overflowed = True
            self._buf.clear()
            return True
        return False

    def eof(self) -> bytes | None:
        """The unterminated tail at end of stream, if any (treated as a last line)."""
        tail = bytes(self._buf).strip()
        self._buf.clear()
        return tail or None


# --- requests -------------------------------------------------------------------------
class _Payload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StartAppData(_Payload):
    spec: AppSpec


class AppIdData(_Payload):
    app_id: str


class StopAppData(_Payload):
    app_id: str
    timeout_secs: float | None = Field(default=None, ge=0)


class InterfaceData(_Payload):
    interface: str = Field(min_length=1, max_length=64)


class GroupData(_Payload):
    group: ContainerGroup


class DnsData(_Payload):
    records: list[DnsRecord]


class ApplyIntentData(_Payload):
    # The intent document itself is validated by the bootstrap service (one schema for
    # vappc, REST and files), which names the bad field.
    intent: dict[str, Any]
    timeout_secs: float | None = Field(default=None, gt=0, le=3600)


class IntentNameData(_Payload):
    name: str = Field(min_length=1, max_length=63)


COMMANDS: dict[str, type[_Payload] | None] = {
    "Ping": None,
    "Version": None,
    "StartApp": StartAppData,
    "StopApp": StopAppData,
    "AppState": AppIdData,
    "ListApps": None,
    "GetInterfaceIp": InterfaceData,
    "StartContainerGroup": GroupData,
    "RunDiagnostic": None,
    "UpdateDnsRecords": DnsData,
    "ApplyIntent": ApplyIntentData,
    "DeleteIntent": IntentNameData,
    "ListIntents": None,
}


@dataclass(frozen=True)
class Request:
    cmd: str
    data: Any = None  # the validated payload model, None for commands without data
    id: RequestId | None = None


class RequestError(InvalidArgument):
    """A line that is not a valid request; ``request_id`` when it could be read."""

    def __init__(self, message: str, request_id: RequestId | None = None) -> None:
        super().__init__(message, category=Category.CONFIG, phase="request")
        self.request_id = request_id


def describe_validation_error(exc: ValidationError, prefix: str = "data") -> str:
    """One line naming every bad field: ``data.spec.colour: unknown field``."""
    parts = []
    for err in exc.errors():
        loc = ".".join([prefix, *(str(p) for p in err["loc"])])
        msg = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def parse_request(line: bytes) -> Request:
    """Validate one request line; raise :class:`RequestError` saying what is wrong."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(f"request is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise RequestError(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RequestError("a request must be a JSON object with a \"cmd\" field")
    req_id = obj.get("id")
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, str | int)):
        raise RequestError("\"id\" must be a string or an integer")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise RequestError("missing \"cmd\" (a string)", req_id)
    extra = sorted(set(obj) - {"cmd", "data", "id"})
    if extra:
        raise RequestError(f"{cmd}: unknown field {extra[0]!r}", req_id)
    if cmd not in COMMANDS:
        raise RequestError(f"unknown command {cmd!r}", req_id)
    model = COMMANDS[cmd]
    data = obj.get("data")
    if model is None:
        if data not in (None, {}, []):
            raise RequestError(f"{cmd} takes no data", req_id)
        return Request(cmd, None, req_id)
    if not isinstance(data, dict):
        raise RequestError(f"{cmd}: \"data\" must be an object", req_id)
    try:
        return Request(cmd, model.model_validate(data), req_id)
    except ValidationError as exc:
        raise RequestError(f"{cmd}: {describe_validation_error(exc)}", req_id) from None


def request_line(cmd: str, data: dict[str, Any] | None = None, req_id: RequestId | None = None) -> bytes:
    obj: dict[str, Any] = {"cmd": cmd}
    if data is not None:
        obj["data"] = data
    if req_id is not None:
        obj["id"] = req_id
    return _dump(obj)


# --- responses ------------------------------------------------------------------------
def _dump(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def progress_line(p: Progress, req_id: RequestId | None = None) -> bytes:
    obj: dict[str, Any] = {"msg": "Progress", "percentage": p.percentage, "message": p.message}
    for key in ("phase", "instance_name", "task_name"):
        value = getattr(p, key)
        if value is not None:
            obj[key] = value
    if req_id is not None:
        obj["id"] = req_id
    return _dump(obj)


_NO_DATA = object()


def ok_line(type_: str, data: Any = _NO_DATA, req_id: RequestId | None = None) -> bytes:
    obj: dict[str, Any] = {"msg": "Ok", "type": type_}
    if data is not _NO_DATA:
        obj["data"] = data
    if req_id is not None:
        obj["id"] = req_id
    return _dump(obj)


def error_line(err: VappError, req_id: RequestId | None = None) -> bytes:
    obj: dict[str, Any] = {"msg": "Error", "category": err.category.value, "message": err.message}
    if err.phase:
        obj["phase"] = err.phase
    obj["is_retryable"] = err.retryable
    if req_id is not None:
        obj["id"] = req_id
    return _dump(obj)


def status_to_wire(status: AppStatus) -> Any:
    if status.phase == "Failed":
        return {"Failed": {"reason": status.reason or "unknown"}}
    return status.phase


def handle_to_wire(h: AppHandle) -> dict[str, str]:
    return {"app_id": h.app_id, "name": h.name}


def summary_to_wire(s: AppSummary) -> dict[str, Any]:
    return {"app_id": s.app_id, "name": s.name, "state": status_to_wire(s.status)}


def group_to_wire(g: GroupResult) -> dict[str, Any]:
    out: dict[str, Any] = {"group_name": g.group_name, "handles": [handle_to_wire(h) for h in g.handles]}
    if g.error is not None:
        # `error` stays a string (old agents); the detail adds category and phase.
        out["error"] = g.error.message
        out["error_detail"] = {
            "category": g.error.category.value,
            "message": g.error.message,
            "phase": g.error.phase,
            "is_retryable": g.error.retryable,
        }
    return out


class ProgressClamp:
    """Keep percentages monotonic per instance (a retry must not move a bar back)."""

    def __init__(self) -> None:
        self._last: dict[str | None, int] = {}

    def __call__(self, p: Progress) -> Progress:
        pct = max(0, min(100, int(p.percentage)))
        pct = max(pct, self._last.get(p.instance_name, 0))
        self._last[p.instance_name] = pct
        if pct == p.percentage:
            return p
        return Progress(pct, p.message, p.phase, p.instance_name, p.task_name)


# --- decoding responses (clients) -----------------------------------------------------
@dataclass(frozen=True)
class OkMsg:
    type: str
    data: Any = None
    id: RequestId | None = None


@dataclass(frozen=True)
class ProgressMsg:
    progress: Progress
    id: RequestId | None = None


@dataclass(frozen=True)
class ErrorMsg:
    category: str
    message: str
    phase: str | None = None
    is_retryable: bool = False
    id: RequestId | None = None


Response = OkMsg | ProgressMsg | ErrorMsg


def parse_response(line: bytes) -> Response:
    """Decode one daemon line; raise ``ValueError`` for anything off-protocol."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("response is not an object")
    msg, rid = obj.get("msg"), obj.get("id")
    if msg == "Ok":
        return OkMsg(str(obj["type"]), obj.get("data"), rid)
    if msg == "Progress":
        p = Progress(
            int(obj["percentage"]), str(obj.get("message", "")),
            obj.get("phase"), obj.get("instance_name"), obj.get("task_name"),
        )
        return ProgressMsg(p, rid)
    if msg == "Error":
        return ErrorMsg(
            str(obj["category"]), str(obj.get("message", "")), obj.get("phase"),
            bool(obj.get("is_retryable", False)), rid,
        )
    raise ValueError(f"unknown msg {msg!r}")


def status_from_wire(value: Any) -> AppStatus:
    if isinstance(value, str) and value in ("Starting", "Running", "Stopped"):
        return AppStatus(value)  # type: ignore[arg-type]
    if isinstance(value, dict) and isinstance(value.get("Failed"), dict):
        return AppStatus.failed(str(value["Failed"].get("reason", "")))
    raise ValueError(f"not an app state: {value!r}")
