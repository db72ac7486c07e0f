"""``/etc/resolv.conf``, ``/etc/hosts`` and ``/etc/hostname`` for a container (pure builders + one writer).

Used by the network manager and by CRI pods (which get their network from CNI).

Rules, as podman applies them:

* nameservers: the configured ones, else the host's; loopback resolvers
  (``127.0.0.0/8``, ``::1``) are dropped because a container's own loopback is
  not the host's; if nothing is left, ``fallback`` (e.g. pasta's DNS forwarder
  address, or the bridge gateway) is used.
* search domains and options: the configured ones, else the host's.
* hosts: localhost lines, the container's own name on each of its addresses
  (or on 127.0.1.1 when it has none), then the extra entries in order
  (``docker-proxy.internal`` → the node's cache address for the agent).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.errors import Category, InvalidArgument


@dataclass(frozen=True)
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


def parse_resolv_conf(text: str) -> ResolvConf:
    servers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        key, _, rest = line.partition(" ")
        values = rest.split()
        if key == "nameserver" and values:
            servers.append(values[0])
        elif key in ("search", "domain"):
            search = values  # the last one wins, as in glibc
        elif key == "options":
            options.extend(values)
    return ResolvConf(servers, search, options)


def _is_loopback(server: str) -> bool:
    try:
        return ipaddress.ip_address(server.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def build_resolv_conf(
    host_text: str,
    *,
    servers: Sequence[str] = (),
    search: Sequence[str] = (),
    options: Sequence[str] = (),
    fallback: Sequence[str] = (),
    keep_loopback: bool = False,
) -> str:
    """The file's text. ``keep_loopback`` is for ``host`` mode, where the host's loopback is shared."""
    host = parse_resolv_conf(host_text)
    for s in servers:
        try:
            ipaddress.ip_address(s)
        except ValueError as exc:
            raise InvalidArgument(f"DNS server {s!r} is not an IP address", category=Category.NETWORK) from exc
    chosen = list(servers) or [s for s in host.nameservers if keep_loopback or not _is_loopback(s)]
    if not chosen:
        chosen = list(fallback)
    lines = []
    domains = list(search) or host.search
    if domains:
        lines.append("search " + " ".join(domains))
    lines += [f"nameserver {s}" for s in chosen[:3]]  # glibc reads three
    opts = list(options) or host.options
    if opts:
        lines.append("options " + " ".join(opts))
    return "\n".join(lines) + "\n"


def build_hosts(hostname: str | None, addresses: Iterable[str], extra: Mapping[str, str] | None = None) -> str:
    """``addresses`` may be CIDRs or bare IPs; ``extra`` maps name → IP."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    ips = [str(ipaddress.ip_interface(a).ip) for a in addresses]
    if hostname:
        for ip in ips or ["127.0.1.1"]:
            lines.append(f"{ip}\t{hostname}")
    for name, ip in (extra or {}).items():
        try:
            ipaddress.ip_address(ip)
        except ValueError as exc:
            raise InvalidArgument(f"extra host {name}={ip!r}: not an IP address",
                                  category=Category.NETWORK) from exc
        lines.append(f"{ip}\t{name}")
    return "\n".join(lines) + "\n"


def write_in_place(path: Path, text: str) -> None:
    """Write ``text`` keeping the inode when the file exists.

    The file may already be bind-mounted into a container, and a rename would
    leave the container looking at the old inode; so existing files are
    truncated and rewritten, new ones are created through a rename.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        with open(path, "r+") as fh:
            fh.seek(0)
            fh.write(text)
            fh.truncate()
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
