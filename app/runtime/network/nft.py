"""nftables rules for bridge networks, all inside one table of our own (``inet vapp`` by default).

Layout of the table (created on first use, deleted whole by :meth:`Nft.destroy`)::

    table inet vapp
      map ports          inet_proto . inet_service : verdict     tcp . 8080 : jump c-<id>
      chain prerouting   nat hook prerouting, dstnat   ─┐ meta l4proto . th dport vmap @ports
      chain output       nat hook output, -100         ─┘ (published ports from outside / the node)
      chain postrouting  nat hook postrouting, srcnat
          ip saddr <subnet> ip daddr != <subnet> masquerade          comment "net:<bridge>"
          oifname <bridge> iifname <bridge> ct status dnat masquerade comment "net:<bridge>" (hairpin)
          oifname <bridge> ip saddr 127.0.0.0/8 masquerade            comment "net:<bridge>" (loopback)
      chain c-<id>       the dnat rules of one container (host address match → ip:port)

Every change is one nft script transaction (libnftables, else ``nft -f -``), so a failure leaves the table as it was.
A container's rules are reached only through its ``ports`` elements, so adding and
removing them needs no rule handles: one exec each way (setup time matters). A host
port/protocol pair is published once per node (the map key). Network rules are found
again by comment. The script builders are pure; :class:`Nft` runs them.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from app.errors import Category, FailedPrecondition, Internal
from app.runtime.network.types import PortMapping

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}$")


def chain_name(container_id: str) -> str:
    return "c-" + re.sub(r"[^A-Za-z0-9_-]", "_", container_id)[:120]


def _q(text: str) -> str:
    return '"' + text.replace('"', "") + '"'


def table_script(table: str) -> str:
    """Create the table, the port map and the base chains with their one dispatch rule each."""
    if not _NAME.match(table):
        raise FailedPrecondition(f"bad nftables table name {table!r}", category=Category.NETWORK)
    return "\n".join([
        f"add table inet {table}",
        f"add map inet {table} ports {{ type inet_proto . inet_service : verdict; }}",
        f"add chain inet {table} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
        f"add chain inet {table} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain inet {table} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"add rule inet {table} prerouting meta l4proto . th dport vmap @ports",
        f"add rule inet {table} output meta l4proto . th dport vmap @ports",
        "",
    ])


def network_script(table: str, bridge: str, subnet: str) -> str:
    net = ipaddress.ip_network(subnet)
    tag = _q(f"net:{bridge}")
    fam = "ip" if net.version == 4 else "ip6"
    lines = [
        f"add rule inet {table} postrouting {fam} saddr {net} {fam} daddr != {net} masquerade comment {tag}",
        f"add rule inet {table} postrouting oifname {_q(bridge)} iifname {_q(bridge)} ct status dnat "
        f"masquerade comment {tag}",
    ]
    if net.version == 4:
        lines.append(f"add rule inet {table} postrouting oifname {_q(bridge)} ip saddr 127.0.0.0/8 "
                     f"masquerade comment {tag}")
    return "\n".join(lines) + "\n"


def container_script(table: str, container_id: str, address: str, ports: Iterable[PortMapping]) -> str:
    """DNAT each published port to ``address`` (the container's IP); empty when nothing is published."""
    ports = list(ports)
    if not ports:
        return ""
    chain = chain_name(container_id)
    ip = ipaddress.ip_address(address)
    fam = "ip" if ip.version == 4 else "ip6"
    target = f"[{ip}]" if ip.version == 6 else str(ip)
    lines = [f"add chain inet {table} {chain}"]
    for p in ports:
        host = ipaddress.ip_address(p.host_ip or "0.0.0.0")
        if host.is_unspecified:
            match = "fib daddr type local"
        elif host.version != ip.version:
            continue
        else:
            match = f"{fam} daddr {host}"
        lines.append(f"add rule inet {table} {chain} {match} {p.protocol} dport {p.host_port} "
                     f"dnat {fam} to {target}:{p.container_port}")
    keys = sorted({(p.protocol, p.host_port) for p in ports})
    elements = ", ".join(f"{proto} . {port} : jump {chain}" for proto, port in keys)
    lines.append(f"add element inet {table} ports {{ {elements} }}")
    return "\n".join(lines) + "\n"


def container_removal_script(table: str, container_id: str, ports: Iterable[PortMapping]) -> str:
    """The inverse of :func:`container_script` from the stored ports (no listing needed)."""
    keys = sorted({(p.protocol, p.host_port) for p in ports})
    if not keys:
        return ""
    chain = chain_name(container_id)
    elements = ", ".join(f"{proto} . {port}" for proto, port in keys)
    return (f"delete element inet {table} ports {{ {elements} }}\n"
            f"flush chain inet {table} {chain}\ndelete chain inet {table} {chain}\n")


def stale_removal_script(table: str, ruleset: dict[str, Any], chains: set[str]) -> str:
    """Remove ``chains`` and every map element jumping to them, given ``nft -j list table``."""
    lines = []
    for item in ruleset.get("nftables", []):
        m = item.get("map")
        if not m or m.get("name") != "ports":
            continue
        for elem in m.get("elem", []):
            key, verdict = elem[0], elem[1]
            if verdict.get("jump", {}).get("target") in chains:
                proto, port = key["concat"]
                lines.append(f"delete element inet {table} ports {{ {proto} . {port} }}")
    for chain in sorted(chains):
        lines += [f"flush chain inet {table} {chain}", f"delete chain inet {table} {chain}"]
    return "\n".join(lines) + ("\n" if lines else "")


def removal_script(table: str, ruleset: dict[str, Any], comment: str) -> str:
    """Delete the rules carrying ``comment``, given ``nft -j -a list table`` output."""
    lines = []
    for item in ruleset.get("nftables", []):
        rule = item.get("rule")
        if rule and rule.get("comment") == comment:
            lines.append(f"delete rule inet {table} {rule['chain']} handle {rule['handle']}")
    return "\n".join(lines) + ("\n" if lines else "")


def container_chains(ruleset: dict[str, Any]) -> set[str]:
    return {i["chain"]["name"] for i in ruleset.get("nftables", []) if "chain" in i
            and i["chain"]["name"].startswith("c-")}


def rule_comments(ruleset: dict[str, Any]) -> set[str]:
    items = ruleset.get("nftables", [])
    return {i["rule"]["comment"] for i in items if "rule" in i and "comment" in i["rule"]}


_NFT_CTX_OUTPUT_HANDLE = 1 << 3  # enum nft_output_flags in <nftables/libnftables.h>
_NFT_CTX_OUTPUT_JSON = 1 << 4


class _LibNft:
    """libnftables through ctypes: the same scripts as ``nft -f``, without a fork+exec per call
    (an exec costs ~20 ms on a loaded node, the call ~1 ms). One context, one caller at a time."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
        for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_char_p
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        self.lib = lib
        self.ctx = lib.nft_ctx_new(0)
        lib.nft_ctx_buffer_output(self.ctx)
        lib.nft_ctx_buffer_error(self.ctx)
        self.lock = threading.Lock()

    def run(self, script: str, *, json_output: bool) -> tuple[int, str, str]:
        with self.lock:
            flags = (_NFT_CTX_OUTPUT_JSON | _NFT_CTX_OUTPUT_HANDLE) if json_output else 0
            self.lib.nft_ctx_output_set_flags(self.ctx, flags)
            rc = self.lib.nft_run_cmd_from_buffer(self.ctx, script.encode())
            # Reading a buffer also empties it for the next call.
            out = (self.lib.nft_ctx_get_output_buffer(self.ctx) or b"").decode(errors="replace")
            err = (self.lib.nft_ctx_get_error_buffer(self.ctx) or b"").decode(errors="replace")
            return rc, out, err


_LIB: list[_LibNft | None] = []


def _libnftables() -> _LibNft | None:
    """The shared library when installed (Debian libnftables1, a dependency of nftables), else None."""
    if not _LIB:
        try:
            _LIB.append(_LibNft(ctypes.CDLL("libnftables.so.1")))
        except OSError:
            _LIB.append(None)
    return _LIB[0]


class Rules(Protocol):
    """What the bridge driver and the manager need from nftables (:class:`Nft`, :class:`FakeNft`)."""

    table: str

    def add_network(self, bridge: str, subnet: str) -> None: ...
    def remove_network(self, bridge: str) -> None: ...
    def add_container(self, container_id: str, address: str, ports: Iterable[PortMapping]) -> None: ...
    def remove_container(self, container_id: str, ports: Iterable[PortMapping]) -> None: ...
    def remove_stale(self, chains: set[str]) -> None: ...
    def chains(self) -> set[str]: ...
    def destroy(self) -> None: ...


class Nft:
    """Runs nft scripts against one table (exec'd, never forked from the daemon)."""

    def __init__(self, table: str = "vapp", binary: str | None = None) -> None:
        if not _NAME.match(table):
            raise FailedPrecondition(f"bad nftables table name {table!r}", category=Category.NETWORK)
        self.table = table
        self.binary = binary or shutil.which("nft") or "/usr/sbin/nft"

    def apply(self, script: str) -> None:
        if not script.strip():
            return
        rc, _out, err = self._run(script, json_output=False)
        if rc != 0:
            raise Internal(f"nft failed: {err.strip()[:500]}", category=Category.NETWORK,
                           details={"script": script[:2000]})

    def ruleset(self) -> dict[str, Any]:
        """``nft -j -a list table inet <table>``; an empty ruleset when the table does not exist."""
        rc, out, err = self._run(f"list table inet {self.table}", json_output=True)
        if rc != 0:
            if "No such file" in err:
                return {"nftables": []}
            raise Internal(f"nft list failed: {err.strip()[:500]}", category=Category.NETWORK)
        data: dict[str, Any] = json.loads(out)
        return data

    def _run(self, script: str, *, json_output: bool) -> tuple[int, str, str]:
        lib = _libnftables()
        if lib is not None:
            return lib.run(script, json_output=json_output)
        argv = [self.binary, *(["-j", "-a"] if json_output else []), "-f", "-"]
        try:
            proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=20)
        except FileNotFoundError as exc:
            raise FailedPrecondition("nft is not installed (Debian package nftables)",
                                     category=Category.NETWORK) from exc
        return proc.returncode, proc.stdout, proc.stderr

    def ensure_table(self) -> dict[str, Any]:
        """Create the table once (its dispatch rules are not idempotent, so look first)."""
        ruleset = self.ruleset()
        if not ruleset.get("nftables"):
            self.apply(table_script(self.table))
            ruleset = self.ruleset()
        return ruleset

    def add_network(self, bridge: str, subnet: str) -> None:
        if f"net:{bridge}" in rule_comments(self.ensure_table()):
            return
        self.apply(network_script(self.table, bridge, subnet))

    def remove_network(self, bridge: str) -> None:
        self.apply(removal_script(self.table, self.ruleset(), f"net:{bridge}"))

    def add_container(self, container_id: str, address: str, ports: Iterable[PortMapping]) -> None:
        """One transaction; fails (``AlreadyExists`` upstream checks first) if a key is taken."""
        self.apply(container_script(self.table, container_id, address, ports))

    def remove_container(self, container_id: str, ports: Iterable[PortMapping]) -> None:
        """Fast path from the stored ports; falls back to listing when the state was partial."""
        script = container_removal_script(self.table, container_id, ports)
        try:
            self.apply(script)
        except Internal:
            self.remove_stale({chain_name(container_id)})

    def remove_stale(self, chains: set[str]) -> None:
        ruleset = self.ruleset()
        self.apply(stale_removal_script(self.table, ruleset, chains & container_chains(ruleset)))

    def destroy(self) -> None:
        """Delete the whole table (uninstall/reset)."""
        if self.ruleset().get("nftables"):
            self.apply(f"delete table inet {self.table}\n")

    def chains(self) -> set[str]:
        """The per-container chains present (for the start-up reconcile)."""
        return container_chains(self.ruleset())


class FakeNft:
    """In-memory stand-in with :class:`Nft`'s surface, for unit tests without root."""

    def __init__(self, table: str = "vapp") -> None:
        self.table = table
        self.networks: dict[str, str] = {}
        self.ports: dict[tuple[str, int], str] = {}  # (proto, host port) → chain
        self.container_rules: dict[str, list[PortMapping]] = {}

    def add_network(self, bridge: str, subnet: str) -> None:
        self.networks[bridge] = subnet

    def remove_network(self, bridge: str) -> None:
        self.networks.pop(bridge, None)

    def add_container(self, container_id: str, address: str, ports: Iterable[PortMapping]) -> None:
        ports = list(ports)
        if not ports:
            return
        chain = chain_name(container_id)
        keys = {(p.protocol, p.host_port) for p in ports}
        if any(k in self.ports for k in keys):
            raise Internal("nft failed: element exists", category=Category.NETWORK)
        self.ports.update(dict.fromkeys(keys, chain))
        self.container_rules[chain] = ports

    def remove_container(self, container_id: str, ports: Iterable[PortMapping]) -> None:
        self.remove_stale({chain_name(container_id)})

    def remove_stale(self, chains: set[str]) -> None:
        self.ports = {k: c for k, c in self.ports.items() if c not in chains}
        for c in chains:
            self.container_rules.pop(c, None)

    def chains(self) -> set[str]:
        return set(self.container_rules)

    def destroy(self) -> None:
        self.__init__(self.table)  # type: ignore[misc]
