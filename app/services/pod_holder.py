"""The pod sandbox holder: a tiny process that keeps a pod's namespaces alive (our "pause").

Started by :mod:`app.services.pods` as an exec'd, single-threaded, stdlib-only
script (never forked from the threaded daemon), already inside the namespaces
``unshare(1)`` created for it, and detached with ``setsid -f`` so it outlives
daemon restarts::

    setsid -f unshare --net --ipc --uts [--pid --fork --mount-proc?] \\
        python3 -S -E pod_holder.py --socket S [--hostname H] [--lo]

It then:

1. sets the hostname (own UTS namespace) and brings ``lo`` up if asked (no CNI);
2. listens on the Unix socket ``S`` (on the host's filesystem, so the daemon can
   reach it although the holder lives in another network namespace), prints
   ``ready`` on stdout and closes it;
3. serves one-line requests, one per connection:

   ``dial <port>``  connect to 127.0.0.1:<port> *inside the pod's netns* and pass
                    the connected socket back with SCM_RIGHTS (port-forward);
                    answer ``ok`` or ``err <message>``
   ``ping``         answer ``pong``

4. reaps children (it is PID 1 of the pod's PID namespace when the pod shares one)
   and exits on SIGTERM/SIGINT, removing its socket.

The daemon learns the holder's host PID from SO_PEERCRED on the socket (inside a
new PID namespace the holder itself only sees PID 1).
"""

from __future__ import annotations

import array
import os
import signal
import socket
import sys

DIAL_TIMEOUT = 10.0


def _reap(_sig: int, _frame: object) -> None:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 (contextlib pulls in functools: startup time on every pod)
        os.unlink(path)
    except OSError:
        pass


def _serve(conn: socket.socket) -> None:
    conn.settimeout(DIAL_TIMEOUT)
    line = b""
    while not line.endswith(b"\n") and len(line) < 256:
        chunk = conn.recv(256)
        if not chunk:
            return
        line += chunk
    verb, _, arg = line.decode(errors="replace").strip().partition(" ")
    if verb == "ping":
        conn.sendall(b"pong\n")
    elif verb == "dial":
        try:
            port = int(arg)
            target = socket.create_connection(("127.0.0.1", port), timeout=DIAL_TIMEOUT)
        except (ValueError, OSError) as exc:
            conn.sendall(f"err {getattr(exc, 'strerror', None) or exc}\n".encode())
            return
        with target:
            target.settimeout(None)
            fds = array.array("i", [target.fileno()])
            conn.sendmsg([b"ok\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    else:
        conn.sendall(b"err unknown request\n")


class Args:
    """Parsed options (a plain class: importing dataclasses costs milliseconds per pod)."""

    def __init__(self) -> None:
        self.socket = ""
        self.hostname: str | None = None
        self.lo = False


def parse_args(argv: list[str]) -> Args:
    """``--socket PATH [--hostname NAME] [--lo]`` (no argparse: it costs startup time on every pod)."""
    out, it = Args(), iter(argv)
    for arg in it:
        if arg == "--socket":
            out.socket = next(it, "")
        elif arg == "--hostname":
            out.hostname = next(it, None)
        elif arg == "--lo":
            out.lo = True
        else:
            raise SystemExit(f"pod_holder: unknown argument {arg!r}")
    if not out.socket:
        raise SystemExit("pod_holder: --socket is required")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    stop = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stop
        stop = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    if args.hostname:
        socket.sethostname(args.hostname)
    if args.lo:
        import subprocess

        subprocess.run(["ip", "link", "set", "lo", "up"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _unlink(args.socket)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o077)
    srv.bind(args.socket)
    os.umask(old)
    srv.listen(16)
    # Outside a new PID namespace our pid is the host's: say it, saving the daemon a round trip.
    sys.stdout.write(f"ready {os.getpid() if os.getpid() != 1 else 0}\n")
    sys.stdout.flush()
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        while not stop:
            try:
                conn, _ = srv.accept()
            except InterruptedError:
                continue
            with conn:
                try:  # noqa: SIM105 (as above)
                    _serve(conn)
                except OSError:
                    pass
    except KeyboardInterrupt:
        pass
    finally:
        _unlink(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
