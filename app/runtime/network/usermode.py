"""Rootless pod networking: a user-mode helper (pasta, else slirp4netns) attached from the host side.

Both helpers give the namespace the same layout, so the rest of the node does
not care which one runs::

    container netns                                   node
    eth0/tap0 10.0.2.100/24  ── default via 10.0.2.2 ──▶ 10.0.2.2 = the node's loopback
                              ── DNS 10.0.2.3 ─────────▶ the node's resolvers
    port C   ◀── host_ip:H (loopback by default) ─────  published with -t/-u (pasta) or the API socket

Per container, under ``<run_dir>/network/<id>/``: ``helper.pid`` (pasta's pidfile),
``slirp.sock`` (slirp4netns API). The pidfile path is also the marker that proves a pid
is still our helper (:func:`~app.runtime.network.netns.helper_alive`).
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from app.errors import AlreadyExists, Category, DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from app.runtime.network.types import PortMapping

ADDRESS, PREFIX, GATEWAY, DNS = "10.0.2.100", 24, "10.0.2.2", "10.0.2.3"
TUN_FIX = "run `chmod 666 /dev/net/tun` as root (scripts/setup-system.sh does it; Debian's udev does it too)"


@dataclass(frozen=True)
class HelperInfo:
    driver: str  # "pasta" | "slirp4netns"
    pid: int
    marker: str  # a string in the helper's command line, unique to this container
    address: str = f"{ADDRESS}/{PREFIX}"
    gateway: str = GATEWAY
    dns: str = DNS


def check_tun() -> None:
    """Fail with the fix when the calling user cannot open /dev/net/tun."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FailedPrecondition("/dev/net/tun is missing: load the tun module or "
                                     "`mknod /dev/net/tun c 10 200`", category=Category.NETWORK) from exc
        raise FailedPrecondition(f"/dev/net/tun is not usable by uid {os.geteuid()} ({exc.strerror}): {TUN_FIX}",
                                 category=Category.NETWORK, details={"fix": TUN_FIX}) from exc
    os.close(fd)


def check_ports_free(ports: Sequence[PortMapping]) -> None:
    """Bind each host port once to prove it is free; ``AlreadyExists`` names the one taken."""
    for p in ports:
        family = socket.AF_INET6 if ":" in p.host_ip else socket.AF_INET
        kind = socket.SOCK_STREAM if p.protocol == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, kind) as sock:
            try:
                sock.bind((p.host_ip or "0.0.0.0", p.host_port))
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    raise AlreadyExists(
                        f"host port {p.host_ip or '*'}:{p.host_port}/{p.protocol} is already in use",
                        category=Category.NETWORK, details={"port": p.to_dict()}) from exc
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise InvalidArgument(f"host address {p.host_ip} is not on this node",
                                          category=Category.NETWORK, details={"port": p.to_dict()}) from exc
                raise


def find_helper(prefer: str = "auto") -> tuple[str, str]:
    """(driver, binary): pasta unless missing (or ``prefer`` says slirp4netns)."""
    order = ["pasta", "slirp4netns"] if prefer in ("auto", "pasta") else ["slirp4netns", "pasta"]
    if prefer in ("pasta", "slirp4netns"):
        order = [prefer]
    for name in order:
        path = shutil.which(name)
        if path:
            return name, path
    raise FailedPrecondition(
        f"no user-mode network helper: {' or '.join(order)} not found (Debian packages passt, slirp4netns)",
        category=Category.NETWORK)


def pasta_argv(binary: str, pidfile: Path, target: int | str, ports: Sequence[PortMapping],
               *, ipv6: bool, userns: str | None = None) -> list[str]:
    """The command line (pure). ``-T/-U none``: no automatic forwarding from the namespace to the
    node's ports; the node's loopback is reached through the gateway address instead."""
    argv = [binary, "--config-net", "-q", "-P", str(pidfile), "-a", ADDRESS, "-n", str(PREFIX),
            "-g", GATEWAY, "--dns-forward", DNS, "-T", "none", "-U", "none"]
    if not ipv6:
        argv.append("-4")
    for proto, flag in (("tcp", "-t"), ("udp", "-u")):
        specs = [f"{p.host_ip}/{p.host_port}:{p.container_port}" if p.host_ip
                 else f"{p.host_port}:{p.container_port}" for p in ports if p.protocol == proto]
        for spec in specs or ["none"]:
            argv += [flag, spec]
    if isinstance(target, int):
        argv.append(str(target))
    else:
        argv += ["--netns", target]
        if userns:
            argv += ["--userns", userns]
    return argv


def start_pasta(binary: str, workdir: Path, target: int | str, ports: Sequence[PortMapping],
                *, ipv6: bool = False, userns: str | None = None) -> HelperInfo:
    workdir.mkdir(parents=True, exist_ok=True)
    pidfile = workdir / "helper.pid"
    pidfile.unlink(missing_ok=True)
    argv = pasta_argv(binary, pidfile, target, ports, ipv6=ipv6, userns=userns)
    # pasta daemonizes after it has set everything up, so a zero exit means ready.
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=15)
    err = "\n".join(ln for ln in proc.stderr.splitlines() if "syslog" not in ln).strip()
    if proc.returncode != 0:
        if "in use" in err or "bind" in err.lower():
            raise AlreadyExists(f"pasta could not publish a port: {err}", category=Category.NETWORK)
        if "tun" in err.lower():
            raise FailedPrecondition(f"pasta: {err}; {TUN_FIX}", category=Category.NETWORK)
        raise Internal(f"pasta failed ({proc.returncode}): {err}", category=Category.NETWORK)
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise Internal(f"pasta started but wrote no pidfile {pidfile}", category=Category.NETWORK) from exc
    return HelperInfo("pasta", pid, str(pidfile))


def _slirp_api(sock_path: Path, request: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(sock_path))
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    reply: dict[str, object] = json.loads(data or b"{}")
    return reply


def start_slirp4netns(binary: str, workdir: Path, target: int | str, ports: Sequence[PortMapping],
                      *, userns: str | None = None) -> HelperInfo:
    """slirp4netns in its own session (it does not daemonize); ready when it writes to the ready fd."""
    workdir.mkdir(parents=True, exist_ok=True)
    api = workdir / "slirp.sock"
    api.unlink(missing_ok=True)
    rfd, wfd = os.pipe()
    argv = [binary, "--configure", "--mtu=65520", f"--api-socket={api}", f"--ready-fd={wfd}"]
    if isinstance(target, int):
        argv += [str(target), "tap0"]
    else:
        argv += ["--netns-type=path"] + ([f"--userns-path={userns}"] if userns else []) + [target, "tap0"]
    try:
        with open(workdir / "slirp.log", "wb") as log_fh:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log_fh,
                                    pass_fds=(wfd,), start_new_session=True)
    finally:
        os.close(wfd)
    try:
        ready, _, _ = select.select([rfd], [], [], 10)
        if not ready or os.read(rfd, 1) != b"1":
            proc.kill()
            proc.wait(5)
            log = (workdir / "slirp.log").read_text(errors="replace").strip()
            raise DeadlineExceeded(f"slirp4netns did not get ready: {log[-500:]}", category=Category.NETWORK)
    finally:
        os.close(rfd)
    info = HelperInfo("slirp4netns", proc.pid, str(api))
    try:
        for p in ports:
            reply = _slirp_api(api, {"execute": "add_hostfwd", "arguments": {
                "proto": p.protocol, "host_addr": p.host_ip or "0.0.0.0",
                "host_port": p.host_port, "guest_port": p.container_port}})
            if "error" in reply:
                raise AlreadyExists(f"slirp4netns could not publish {p.host_port}/{p.protocol}: {reply['error']}",
                                    category=Category.NETWORK)
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return info
