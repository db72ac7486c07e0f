"""Declared template variables: types, validation, and the values a profile renders with.

Values come from three places, highest first: the intent's ``values``, the
variable's ``default``, and the built-ins the loop provides (paths, node name,
CRI socket; see :data:`BUILTINS`). A profile may only use variables it declares
or built-ins; a value for an undeclared variable is an error, not silently
ignored, because a typo there would otherwise render the default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from app.bootstrap.schema import VariableDecl
from app.errors import InvalidArgument

BUILTINS = (
    "node_name",  # this node's name (hostname unless configured)
    "node_ip",  # the address components advertise
    "roles",  # list of this node's roles (control-plane, worker, ...)
    "state_dir",
    "pki_dir",  # <state_dir>/pki
    "kubeconfig_dir",  # <state_dir>/kubeconfigs
    "component_dir",  # <state_dir>/bootstrap/<intent>/<component> (per component)
    "volumes",  # mapping volume name -> host dir (per component)
    "cri_socket",
    "dns_hosts_file",
    "intent",  # the intent's name
)

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_DURATION_RE = re.compile(r"^(\d+)(ms|s|m|h)$")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}


def _fail(name: str, value: Any, why: str) -> InvalidArgument:
    return InvalidArgument(f"variable {name!r}: {why} (got {value!r})", phase="variables",
                           details={"variable": name})


def _int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise _fail(name, value, "must be an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    raise _fail(name, value, "must be an integer")


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.lower() in ("true", "yes", "1")
    raise _fail(name, value, "must be true or false")


def _str(name: str, value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _fail(name, value, "must be a string")


def coerce(name: str, decl: VariableDecl, value: Any) -> Any:
    """Check one value against its declaration and return it in its typed form.

    Errors quote the bad value, except for ``secret`` variables."""
    try:
        return _coerce(name, decl, value)
    except InvalidArgument as exc:
        if not decl.secret:
            raise
        raise InvalidArgument(exc.message.replace(repr(value), "'***'"), phase="variables",
                              details={"variable": name}) from None


def _coerce(name: str, decl: VariableDecl, value: Any) -> Any:
    t = decl.type
    out: Any
    if t in ("int", "port"):
        out = _int(name, value)
        lo, hi = (1, 65535) if t == "port" else (None, None)
        lo = decl.min if decl.min is not None else lo
        hi = decl.max if decl.max is not None else hi
        if (lo is not None and out < lo) or (hi is not None and out > hi):
            raise _fail(name, value, f"must be between {lo} and {hi}")
        return out
    if t == "bool":
        return _bool(name, value)
    if t == "list":
        if not isinstance(value, list | tuple):
            raise _fail(name, value, "must be a list")
        return [_str(f"{name}[{i}]", v) for i, v in enumerate(value)]
    out = _str(name, value)
    if t == "ip":
        try:
            ipaddress.ip_address(out)
        except ValueError:
            raise _fail(name, value, "must be an IP address") from None
    elif t == "cidr":
        try:
            ipaddress.ip_network(out, strict=False)
        except ValueError:
            raise _fail(name, value, "must be a CIDR like 10.96.0.0/12") from None
    elif t == "hostname" and not _HOST_RE.match(out):
        raise _fail(name, value, "must be a DNS name (lowercase labels)")
    elif t == "path" and not out.startswith("/"):
        raise _fail(name, value, "must be an absolute path")
    elif t == "url":
        parts = urlsplit(out)
        if parts.scheme not in ("http", "https", "unix") or not (parts.netloc or parts.path):
            raise _fail(name, value, "must be an http(s):// or unix:// URL")
    elif t == "duration":
        m = _DURATION_RE.match(out)
        if not m:
            raise _fail(name, value, "must be a duration like 500ms, 30s, 5m or 2h")
    elif t == "image":
        from app.oci.reference import parse as parse_ref

        try:
            parse_ref(out)
        except InvalidArgument as exc:
            raise _fail(name, value, f"must be an image reference: {exc.message}") from None
    elif t == "enum" and out not in (decl.choices or []):
        raise _fail(name, value, f"must be one of {decl.choices}")
    if decl.pattern is not None and not re.fullmatch(decl.pattern, out):
        raise _fail(name, value, f"must match {decl.pattern!r}")
    return out


def resolve(decls: Mapping[str, VariableDecl], values: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values for every declared variable; all problems reported together."""
    problems: list[str] = []
    out: dict[str, Any] = {}
    for key in values:
        if key not in decls:
            problems.append(f"variable {key!r}: not declared by the profile")
    for name, decl in decls.items():
        if name in BUILTINS:
            problems.append(f"variable {name!r}: shadows a built-in variable")
            continue
        if name in values:
            raw = values[name]
        elif decl.default is not None:
            raw = decl.default
        elif decl.required:
            problems.append(f"variable {name!r}: required and not set")
            continue
        else:
            out[name] = None
            continue
        try:
            out[name] = coerce(name, decl, raw)
        except InvalidArgument as exc:
            problems.append(exc.message)
    if problems:
        raise InvalidArgument("; ".join(problems), phase="variables", details={"errors": problems})
    return out


def redact(decls: Mapping[str, VariableDecl], values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("***" if k in decls and decls[k].secret else v) for k, v in values.items()}


def duration_seconds(text: str) -> float:
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]
