"""A CNI client (spec 1.0, plugins 0.3.x-1.0): ADD / CHECK / DEL of one pod network.

How containerd and CRI-O drive CNI, reduced to what a node needs:

* the network is the first valid file (lexical order) in the conf dir:
  ``*.conflist`` (a plugin chain) or ``*.conf``/``*.json`` (one plugin, wrapped);
* every plugin is an executable named after its ``type`` in one of the bin dirs,
  run with ``CNI_COMMAND``/``CNI_CONTAINERID``/``CNI_NETNS``/``CNI_IFNAME``/
  ``CNI_ARGS``/``CNI_PATH`` in the environment and its own config (plus ``name``,
  ``cniVersion``, ``prevResult`` and the ``runtimeConfig`` capabilities it
  declares) on stdin;
* ADD runs the chain forwards, each plugin getting the previous result; CHECK runs
  forwards with the cached result; DEL runs backwards with the cached result;
* a ``loopback`` plugin (if installed) brings ``lo`` up first, as containerd does.

The result of ADD is cached on disk *before* returning, so DEL works after a
daemon restart, with the exact config the network was set up with::

    <cache_dir>/results/<network name>-<container id>-<ifname>.json
        {"kind": "vappCniCacheV1", "containerId", "ifName", "networkName",
         "config": <conflist as used>, "cniArgs": [[k, v]...],
         "capabilityArgs": {...}, "result": <final ADD result>}

Errors: a missing config → :class:`FailedPrecondition` (the node reports
NetworkReady=false), a missing plugin → ``FailedPrecondition``, a plugin
failure → ``Unavailable`` with the plugin's own ``msg``/``details``. DEL never
fails on "already gone".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.errors import Category, FailedPrecondition, InvalidArgument, Unavailable

CACHE_KIND = "vappCniCacheV1"
LOOPBACK_CONF: dict[str, Any] = {
    "cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}],
}
PLUGIN_TIMEOUT = 60.0


@dataclass(frozen=True)
class NetworkConfig:
    """One loaded network (a conflist), with the file it came from."""

    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins}


@dataclass(frozen=True)
class Attachment:
    """Who is attached: the runtime's id, the netns path, and Kubernetes' CNI_ARGS."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: Sequence[tuple[str, str]] = ()
    capabilities: Mapping[str, Any] = field(default_factory=dict)  # portMappings, dns, ...


def parse_network(data: dict[str, Any], source: str = "") -> NetworkConfig:
    """Validate a conflist (or single-plugin conf) dict. Pure."""
    if not isinstance(data, dict):
        raise InvalidArgument(f"CNI config {source}: not an object", category=Category.NETWORK)
    name, version = data.get("name"), data.get("cniVersion", "0.3.1")
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"CNI config {source}: missing network name", category=Category.NETWORK)
    if "plugins" in data:
        plugins = data["plugins"]
    elif "type" in data:
        plugins = [{k: v for k, v in data.items() if k not in ("name", "cniVersion")}]
    else:
        raise InvalidArgument(f"CNI config {source}: neither plugins nor type", category=Category.NETWORK)
    if not isinstance(plugins, list) or not plugins or not all(
        isinstance(p, dict) and isinstance(p.get("type"), str) for p in plugins
    ):
        raise InvalidArgument(f"CNI config {source}: every plugin needs a type", category=Category.NETWORK)
    return NetworkConfig(name, str(version), plugins, source)


def load_network(conf_dir: Path) -> NetworkConfig:
    """The first valid network in ``conf_dir`` (lexical order), as libcni picks it."""
    try:
        files = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json"))
    except FileNotFoundError:
        files = []
    problems: list[str] = []
    for path in files:
        try:
            return parse_network(json.loads(path.read_text()), str(path))
        except (OSError, ValueError, InvalidArgument) as exc:
            problems.append(f"{path.name}: {exc}")
    hint = f" ({'; '.join(problems)})" if problems else ""
    raise FailedPrecondition(f"no valid CNI network config in {conf_dir}{hint}", category=Category.NETWORK)


def plugin_stdin(net: NetworkConfig, plugin: dict[str, Any], prev: dict[str, Any] | None,
                 capabilities: Mapping[str, Any]) -> dict[str, Any]:
    """The config one plugin reads on stdin (spec §"Network configuration list runtime"). Pure."""
    conf = dict(plugin)
    conf["name"], conf["cniVersion"] = net.name, net.cni_version
    if prev is not None:
        conf["prevResult"] = prev
    wanted = plugin.get("capabilities") or {}
    runtime = {k: v for k, v in capabilities.items() if wanted.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    else:
        conf.pop("runtimeConfig", None)
    return conf


def cni_args_string(args: Sequence[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in (("IgnoreUnknown", "1"), *args))


class CniClient:
    """Runs one conf dir's network against pod namespaces. Safe for concurrent pods."""

    def __init__(self, conf_dir: Path, bin_dirs: Sequence[Path], cache_dir: Path,
                 *, loopback: bool = True, timeout: float = PLUGIN_TIMEOUT) -> None:
        self.conf_dir, self.cache_dir = Path(conf_dir), Path(cache_dir)
        self.bin_dirs = [Path(d) for d in bin_dirs]
        self.loopback, self.timeout = loopback, timeout

    # -- readiness -------------------------------------------------------------------
    def status(self) -> tuple[bool, str]:
        """(ready, why not): a network config exists and all its plugins are installed."""
        try:
            net = load_network(self.conf_dir)
            for plugin in net.plugins:
                self._find(plugin["type"])
        except (FailedPrecondition, InvalidArgument) as exc:
            return False, exc.message
        return True, ""

    def _find(self, kind: str) -> Path:
        if "/" in kind or kind in ("", ".", ".."):
            raise InvalidArgument(f"bad CNI plugin type {kind!r}", category=Category.NETWORK)
        for d in self.bin_dirs:
            exe = d / kind
            if os.access(exe, os.X_OK):
                return exe
        dirs = ", ".join(map(str, self.bin_dirs))
        raise FailedPrecondition(f"CNI plugin {kind!r} not found in {dirs}", category=Category.NETWORK)

    # -- verbs -----------------------------------------------------------------------
    async def add(self, att: Attachment) -> dict[str, Any]:
        """Attach: loopback, then the chain. A failed ADD is rolled back with DEL."""
        net = load_network(self.conf_dir)
        loopback: asyncio.Task[dict[str, Any]] | None = None
        if self.loopback and self._has("loopback"):
            # lo and eth0 are independent: bring lo up while the chain runs
            lo = parse_network(LOOPBACK_CONF)
            loopback = asyncio.create_task(
                self._run_chain("ADD", lo, Attachment(att.container_id, att.netns, "lo", att.args), None))
        cache = {"kind": CACHE_KIND, "containerId": att.container_id, "ifName": att.ifname,
                 "networkName": net.name, "config": net.to_dict(), "cniArgs": [list(a) for a in att.args],
                 "capabilityArgs": dict(att.capabilities), "netns": att.netns, "result": None}
        # Cache the config before running so a crash half-way still lets DEL clean up.
        self._write_cache(net.name, att, cache)
        try:
            result = await self._run_chain("ADD", net, att, None)
            if loopback is not None:
                await loopback
        except BaseException:
            if loopback is not None and not loopback.done():
                loopback.cancel()
                await asyncio.gather(loopback, return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.delete(att.container_id, att.ifname, netns=att.netns)
            raise
        cache["result"] = result
        self._write_cache(net.name, att, cache)
        return result

    async def check(self, container_id: str, ifname: str = "eth0") -> None:
        cache = self._read_cache(container_id, ifname)
        if cache is None:
            raise FailedPrecondition(f"no CNI attachment cached for {container_id}/{ifname}",
                                     category=Category.NETWORK)
        net = parse_network(cache["config"])
        if net.cni_version.split(".")[:2] in (["0", "1"], ["0", "2"], ["0", "3"]):
            return  # CHECK exists from 0.4.0 on
        att = self._attachment(cache)
        prev = cache.get("result")
        for plugin in net.plugins:
            await self._exec("CHECK", plugin, plugin_stdin(net, plugin, prev, att.capabilities), att)

    async def delete(self, container_id: str, ifname: str = "eth0", *, netns: str | None = None) -> None:
        """Detach with the cached config (falls back to the current one). Idempotent.

        ``netns`` overrides the cached path: pass ``""`` when the namespace is gone
        so plugins only release what lives outside it (IPAM leases, NAT rules).
        """
        cache = self._read_cache(container_id, ifname)
        if cache is not None:
            net = parse_network(cache["config"])
            att = self._attachment(cache)
            prev = cache.get("result")
        else:
            try:
                net = load_network(self.conf_dir)
            except FailedPrecondition:
                return  # never attached through a network we know of
            att, prev = Attachment(container_id, netns or "", ifname), None
        if netns is not None:
            att = Attachment(att.container_id, netns, att.ifname, att.args, att.capabilities)
        for plugin in reversed(net.plugins):
            await self._exec("DEL", plugin, plugin_stdin(net, plugin, prev, att.capabilities), att)
        with contextlib.suppress(FileNotFoundError):
            self._cache_path(net.name, container_id, ifname).unlink()

    def forget(self, container_id: str, ifname: str = "eth0") -> None:
        """Drop the cache entry without running DEL (after a rollback whose DEL failed too)."""
        cache = self._read_cache(container_id, ifname)
        if cache is not None:
            with contextlib.suppress(FileNotFoundError):
                self._cache_path(cache["networkName"], container_id, ifname).unlink()

    def cached_result(self, container_id: str, ifname: str = "eth0") -> dict[str, Any] | None:
        cache = self._read_cache(container_id, ifname)
        return None if cache is None else cache.get("result")

    # -- internals -------------------------------------------------------------------
    def _has(self, kind: str) -> bool:
        try:
            self._find(kind)
        except FailedPrecondition:
            return False
        return True

    async def _run_chain(self, command: str, net: NetworkConfig, att: Attachment,
                         prev: dict[str, Any] | None) -> dict[str, Any]:
        result = prev
        for plugin in net.plugins:
            out = await self._exec(command, plugin, plugin_stdin(net, plugin, result, att.capabilities), att)
            result = out or result
        return result or {}

    async def _exec(self, command: str, plugin: dict[str, Any], conf: dict[str, Any],
                    att: Attachment) -> dict[str, Any] | None:
        exe = self._find(plugin["type"])
        env = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": att.container_id, "CNI_NETNS": att.netns,
            "CNI_IFNAME": att.ifname, "CNI_ARGS": cni_args_string(att.args),
            "CNI_PATH": os.pathsep.join(map(str, self.bin_dirs)),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }
        proc = await asyncio.create_subprocess_exec(
            str(exe), env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), self.timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise Unavailable(f"CNI {plugin['type']} {command} timed out", category=Category.NETWORK) from exc
        if proc.returncode != 0:
            msg = _plugin_error(out, err)
            if command == "DEL" and _gone(msg):
                return None
            raise Unavailable(f"CNI {plugin['type']} {command} failed: {msg}", category=Category.NETWORK,
                              details={"plugin": plugin["type"], "command": command})
        if command != "ADD" or not out.strip():
            return None
        try:
            parsed = json.loads(out)
        except ValueError as exc:
            raise Unavailable(f"CNI {plugin['type']} returned invalid JSON",
                              category=Category.NETWORK) from exc
        return parsed if isinstance(parsed, dict) else None

    def _cache_path(self, network: str, container_id: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{network}-{container_id}-{ifname}.json"

    def _write_cache(self, network: str, att: Attachment, data: dict[str, Any]) -> None:
        path = self._cache_path(network, att.container_id, att.ifname)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def _read_cache(self, container_id: str, ifname: str) -> dict[str, Any] | None:
        suffix = f"-{container_id}-{ifname}.json"
        for path in (self.cache_dir / "results").glob(f"*{suffix}"):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if data.get("kind") == CACHE_KIND and data.get("containerId") == container_id:
                return data
        return None

    @staticmethod
    def _attachment(cache: dict[str, Any]) -> Attachment:
        return Attachment(cache["containerId"], cache.get("netns", ""), cache["ifName"],
                          [(str(k), str(v)) for k, v in cache.get("cniArgs", [])],
                          cache.get("capabilityArgs") or {})


def _plugin_error(out: bytes, err: bytes) -> str:
    try:
        data = json.loads(out)
        msg = str(data.get("msg", ""))
        if data.get("details"):
            msg += f": {data['details']}"
        return msg or err.decode(errors="replace").strip()
    except (ValueError, AttributeError):
        return (err or out).decode(errors="replace").strip()[:500]


def _gone(msg: str) -> bool:
    low = msg.lower()
    return "no such file" in low or "not found" in low or "does not exist" in low


def first_ips(result: Mapping[str, Any]) -> list[str]:
    """Addresses (without prefix) from a CNI result, IPv4 first (what PodSandboxStatus shows)."""
    ips = [str(ip.get("address", "")).split("/")[0] for ip in result.get("ips", []) if isinstance(ip, dict)]
    ips = [ip for ip in ips if ip]
    return sorted(ips, key=lambda a: ":" in a)
