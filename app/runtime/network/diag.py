"""Introspection for vappc (GetInterfaceIp, RunDiagnostic) over the netlink seam.

``interface_ips("eth*")``: a trailing ``*`` is a prefix match, anything else an
exact interface name. IPv4 addresses come first (what agents usually want), then
IPv6 ones without link-local addresses.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from app.runtime.network.netlink import Netlink, PyrouteNetlink


def _matches(pattern: str, name: str) -> bool:
    if pattern.endswith("*"):
        return name.startswith(pattern[:-1])
    return name == pattern


def interface_ips(pattern: str, netlink: Netlink | None = None) -> list[str]:
    """Every usable address (no CIDR suffix) of the interfaces matching ``pattern``."""
    nl = netlink or PyrouteNetlink()
    found = [ipaddress.ip_interface(a.cidr).ip for a in nl.addresses(None) if _matches(pattern, a.ifname)]
    usable = [ip for ip in found if not ip.is_link_local]
    return [str(ip) for ip in sorted(usable, key=lambda ip: (ip.version, found.index(ip)))]


def interface_ip(pattern: str, netlink: Netlink | None = None) -> str | None:
    """The first address of ``interface_ips``, or None when no interface matches or has one."""
    ips = interface_ips(pattern, netlink)
    return ips[0] if ips else None


def network_diagnostics(netlink: Netlink | None = None,
                        attachments: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Text sections for RunDiagnostic: ``interfaces``, ``routes`` and (given) ``attachments``."""
    nl = netlink or PyrouteNetlink()
    addrs: dict[str, list[str]] = {}
    for a in nl.addresses(None):
        addrs.setdefault(a.ifname, []).append(a.cidr)
    iface_lines = []
    for link in nl.links(None):
        state = "UP" if link.up else "DOWN"
        extra = f" master {link.master}" if link.master else ""
        kind = f" ({link.kind})" if link.kind else ""
        iface_lines.append(f"{link.name}{kind} {state}{extra} {' '.join(addrs.get(link.name, []))}".rstrip())
    route_lines = [f"{r.dst}" + (f" via {r.gateway}" if r.gateway else "") + (f" dev {r.dev}" if r.dev else "")
                   for r in nl.routes(None)]
    out = {"interfaces": "\n".join(iface_lines), "routes": "\n".join(route_lines)}
    if attachments is not None:
        out["attachments"] = "\n".join(describe_attachment(a) for a in attachments)
    return out


def describe_attachment(a: dict[str, Any]) -> str:
    """One line per container: ``ID mode=pod driver=bridge addresses=... ports=... helpers=...``."""
    ports = ",".join(f"{p['host_ip']}:{p['host_port']}->{p['container_port']}/{p['protocol']}" for p in a["ports"])
    helpers = ",".join(str(p) for p in a["helper_pids"])
    return (f"{a['container_id']} mode={a['mode']} driver={a['driver']} "
            f"addresses={','.join(a['addresses'])} ports={ports} helpers={helpers}")
