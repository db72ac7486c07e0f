"""The fork server: the only place container processes are forked from on behalf of the daemon.

The daemon is multi-threaded (grpc, uvicorn, sqlite): forking it to set up namespaces is
unsafe. :func:`start_forkserver` (called by ``vapp-core daemon`` before any thread exists)
forks once and execs a fresh, lean, single-threaded interpreter running :func:`serve`,
which pre-imports what container setup needs and forks per request::

    daemon ──SOCK_SEQPACKET (JSON + SCM_RIGHTS)──► fork server
       request {"op": "shim", ...}  fds [reply]              ─► fork ─ setsid ─► shim
       request {"op": "exec", ...}  fds [reply, stdin?, stdout?, stderr?] ─► fork ─► exec helper
    each forked process answers on its own ``reply`` socket, so requests run concurrently.

When the daemon dies the fork server reads EOF and exits; shims (setsid'd, reparented)
keep their containers running.
"""

from __future__ import annotations

import array
import contextlib
import json
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

# subprocess and threading are imported where the daemon side needs them, not at module
# level: the fork server imports this module, and threading's at-fork handler (plus the
# pages those modules occupy) would cost every forked shim and init copy-on-write faults.

_MAX_FDS = 8


def send_message(sock: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
    payload = json.dumps(message).encode()
    sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])


def recv_message(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(1 << 20, socket.CMSG_SPACE(_MAX_FDS * fds.itemsize))
    for level, kind, raw in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(raw[: len(raw) - (len(raw) % fds.itemsize)])
    if not data:
        return None, list(fds)
    return json.loads(data), list(fds)


# --- server (the lean process) -------------------------------------------------------------
def _reap(*_: Any) -> None:
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def serve(fd: int) -> None:
    """The fork server loop; returns when the daemon closes its end."""
    import gc

    from app.runtime.backends import native  # noqa: F401  pre-import: children start warm
    from app.runtime.supervise import execproc, shim

    # Freeze what is loaded now: the collector never touches (and so never copies) these
    # pages in the children, which keeps each shim's private memory small.
    gc.collect()
    gc.freeze()
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a ^C to the daemon's group is not for us
    while True:
        try:
            request, fds = recv_message(sock)
        except InterruptedError:
            continue
        if request is None:
            return
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            sock.close()
            reply = socket.socket(fileno=fds[0])
            if request.get("op") == "shim":
                # One fork is enough: our child, but in its own session; if the daemon (and so
                # this server) dies, it is reparented and carries on.
                os.setsid()
                shim.run_shim(request, reply)
            elif request.get("op") == "exec":
                execproc.run_exec(request, reply, fds[1:])
            os._exit(2)
        for extra in fds:
            os.close(extra)


def _main() -> None:
    serve(int(sys.argv[1]))


# --- client (in the daemon) ----------------------------------------------------------------
class ForkServer:
    """Daemon-side handle. Thread-safe; replies are read asynchronously on per-request sockets."""

    def __init__(self, sock: socket.socket, pid: int, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.sock, self.pid, self._proc = sock, pid, proc
        import threading

        self._lock = threading.Lock()

    def request(self, message: dict[str, Any], fds: list[int] | None = None) -> socket.socket:
        """Send one request; return our end of its reply socket (non-blocking)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with self._lock:
                send_message(self.sock, message, [theirs.fileno(), *(fds or [])])
        finally:
            theirs.close()
        ours.setblocking(False)
        return ours

    async def reply(self, sock: socket.socket, timeout: float | None = None) -> tuple[dict[str, Any] | None, list[int]]:
        """Next message on a reply socket (None at EOF), with any fds it carried."""
        import asyncio  # not at module level: the fork server stays lean

        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not waiter.done():
                waiter.set_result(None)

        while True:
            try:
                return recv_message(sock)
            except BlockingIOError:
                pass
            loop.add_reader(sock.fileno(), ready)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout)
            finally:
                loop.remove_reader(sock.fileno())
            waiter = loop.create_future()

    def close(self) -> None:
        self.sock.close()
        if self._proc is not None:
            self._proc.wait(10)


def start_forkserver(python: str | None = None) -> ForkServer:
    """Start the fork server (a fresh interpreter). Call it early in ``vapp-core daemon``;
    spawning uses fork+exec (``subprocess``), so it stays safe even if threads already exist."""
    import subprocess

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    project = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = project + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    argv = [python or sys.executable, "-s", "-c", "from app.runtime.forkserver import _main; _main()",
            str(theirs.fileno())]
    # process_group=0: out of the daemon's group, so a terminal ^C is not delivered to it
    proc = subprocess.Popen(argv, pass_fds=[theirs.fileno()], env=env, process_group=0,
                            stdin=subprocess.DEVNULL)
    theirs.close()
    return ForkServer(ours, proc.pid, proc)


_early: ForkServer | None = None


def start_early() -> ForkServer:
    """Called first thing by ``vapp-core daemon`` (before threads); :func:`shared` hands it out."""
    global _early
    if _early is None:
        _early = start_forkserver()
    return _early


def shared() -> ForkServer:
    """The daemon's fork server: the early one, or one started now (safe: fork+exec)."""
    return start_early()


if __name__ == "__main__":
    _main()
