"""Free loopback ports for servers started by tests.

Several test runs share this machine, so never hard-code a port: ask the kernel
for one (bind port 0) and hand it to the server. There is a small window in
which another process can take it; servers started by the suite retry on a
bind failure (see ``helpers.procs.start_with_port``).
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
