"""``vapp-oci``: the native runtime as a standalone command with runc's command-line contract.

    vapp-oci [--root DIR] [--log FILE] [--log-format text|json] COMMAND ...
      create [-b BUNDLE] [--pid-file F] [--console-socket S] ID
      start ID | state ID | kill [--all] ID [SIGNAL] | delete [--force] ID
      run [-b BUNDLE] [--pid-file F] [--console-socket S] [--detach] ID
      exec [--process F | COMMAND...] [--detach] [--pid-file F] [--console-socket S] [--tty] ID
      spec [--rootless] [-b BUNDLE] | ps [--format json] ID | features | list

Exit status 0 on success, 1 on error (127/126 when the process cannot be executed),
and for ``run`` the container's exit status. Errors go to stderr and to ``--log``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from typing import Any

from app.runtime.oci import defaults, ops, state


def default_root() -> str:
    if os.geteuid() == 0:
        return "/run/vapp-oci"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.access(xdg, os.W_OK):
        return os.path.join(xdg, "vapp-oci")
    return f"/tmp/vapp-oci-{os.geteuid()}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vapp-oci", description="native rootless OCI runtime (runc CLI)")
    p.add_argument("--root", default=None)
    p.add_argument("--log", default=None)
    p.add_argument("--log-format", default="text", choices=["text", "json"])
    p.add_argument("--debug", action="store_true")
    p.add_argument("--systemd-cgroup", action="store_true")
    p.add_argument("--rootless", default="auto")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("create", "run"):
        c = sub.add_parser(name)
        c.add_argument("--bundle", "-b", default=".")
        c.add_argument("--pid-file", default=None)
        c.add_argument("--console-socket", default=None)
        c.add_argument("--no-pivot", action="store_true")
        c.add_argument("--no-new-keyring", action="store_true")
        c.add_argument("--preserve-fds", type=int, default=0)
        if name == "run":
            c.add_argument("--detach", "-d", action="store_true")
            c.add_argument("--keep", action="store_true")
        c.add_argument("id")
    e = sub.add_parser("exec")
    e.add_argument("--process", "-p", default=None)
    e.add_argument("--detach", "-d", action="store_true")
    e.add_argument("--pid-file", default=None)
    e.add_argument("--console-socket", default=None)
    e.add_argument("--tty", "-t", action="store_true")
    e.add_argument("--cwd", default=None)
    e.add_argument("--env", "-e", action="append", default=[])
    e.add_argument("--user", "-u", default=None)
    e.add_argument("--preserve-fds", type=int, default=0)
    e.add_argument("id")
    e.add_argument("argv", nargs=argparse.REMAINDER)  # not "command": that is the subcommand's dest
    for name in ("start", "state"):
        sub.add_parser(name).add_argument("id")
    k = sub.add_parser("kill")
    k.add_argument("--all", "-a", action="store_true")
    k.add_argument("id")
    k.add_argument("signal", nargs="?", default="SIGTERM")
    d = sub.add_parser("delete")
    d.add_argument("--force", "-f", action="store_true")
    d.add_argument("id")
    s = sub.add_parser("spec")
    s.add_argument("--rootless", action="store_true")
    s.add_argument("--bundle", "-b", default=".")
    ps = sub.add_parser("ps")
    ps.add_argument("--format", "-f", default="table")
    ps.add_argument("id")
    ps.add_argument("ps_args", nargs="*")
    sub.add_parser("features")
    lst = sub.add_parser("list")
    lst.add_argument("--format", "-f", default="table")
    lst.add_argument("--quiet", "-q", action="store_true")
    return p


class _Log:
    def __init__(self, path: str | None, fmt: str) -> None:
        self.path, self.fmt = path, fmt

    def error(self, message: str) -> None:
        sys.stderr.write(f"vapp-oci: {message}\n")
        sys.stderr.flush()
        if self.path:
            with contextlib.suppress(OSError), open(self.path, "a") as fh:
                if self.fmt == "json":
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                    fh.write(json.dumps({"level": "error", "msg": message, "time": stamp}) + "\n")
                else:
                    fh.write(f"level=error msg={json.dumps(message)}\n")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    log = _Log(args.log, args.log_format)
    root = os.path.abspath(args.root or default_root())
    try:
        return _dispatch(args, root)
    except (ops.OpError, _create_error()) as exc:
        log.error(str(exc))
        return int(getattr(exc, "code", 1) or 1)
    except OSError as exc:
        log.error(f"{exc.strerror or exc}{': ' + str(exc.filename) if exc.filename else ''}")
        return 1


def _create_error() -> type[Exception]:
    from app.runtime.oci.create import CreateError

    return CreateError


def _dispatch(args: argparse.Namespace, root: str) -> int:
    command = args.command
    if command in ("create", "run"):
        return _create(args, root)
    if command == "exec":
        return _exec(args, root)
    if command == "start":
        ops.start(root, args.id)
    elif command == "state":
        print(json.dumps(state.public_state(root, ops.get(root, args.id)), indent=2))
    elif command == "kill":
        ops.kill(root, args.id, ops.parse_signal(args.signal), args.all)
    elif command == "delete":
        if args.force and state.load(root, args.id) is None:
            return 0  # runc: delete --force of a missing container is not an error
        ops.delete(root, args.id, args.force)
    elif command == "spec":
        path = os.path.join(args.bundle, "config.json")
        if os.path.exists(path):
            raise ops.OpError(f"File {path} exists. Remove it first or use a different bundle.")
        spec = defaults.runc_spec(args.rootless, os.geteuid(), os.getegid())
        with open(path, "w") as fh:
            json.dump(spec, fh, indent=2)
    elif command == "ps":
        st = ops.get(root, args.id)
        pids = ops.processes(st) if state.live_status(root, st) in ("created", "running") else []
        print(json.dumps(pids) if args.format == "json" else "\n".join(["PID", *map(str, pids)]))
    elif command == "features":
        print(json.dumps(_features(), indent=2))
    elif command == "list":
        _list(root, args)
    return 0


def _create(args: argparse.Namespace, root: str) -> int:
    from app.runtime.kernel.linux import LinuxKernel
    from app.runtime.oci.create import create

    detach = args.command == "create" or args.detach
    st = create(LinuxKernel(), root, args.id, args.bundle, console_socket=args.console_socket,
                pid_file=args.pid_file, subreaper=not detach)
    if args.command == "create":
        return 0
    ops.start(root, args.id)
    if detach:
        return 0
    return _wait_and_delete(root, st, keep=args.keep)


def _exec(args: argparse.Namespace, root: str) -> int:
    from app.runtime.oci import execcmd

    if args.process:
        with open(args.process, "rb") as fh:
            proc = json.loads(fh.read())
    else:
        with open(os.path.join(ops.get(root, args.id)["bundle"], "config.json"), "rb") as fh:
            cfg = json.loads(fh.read())
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        proc = execcmd.process_from_args(cfg, command, cwd=args.cwd, env=args.env, user=args.user, tty=args.tty)
    return execcmd.exec_process(root, args.id, proc, detach=args.detach, pid_file=args.pid_file,
                                console_socket=args.console_socket)


def _wait_and_delete(root: str, st: dict[str, Any], keep: bool) -> int:
    pid = int(st["pid"])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, lambda s, _f: os.kill(pid, s))
    code = 255
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if reaped == pid:
            code = os.waitstatus_to_exitcode(status)
            code = 128 - code if code < 0 else code
            break
    if not keep:
        ops.delete(root, st["id"], force=True)
    return code


def _features() -> dict[str, Any]:
    from app.runtime.kernel.caps import CAP_NAMES

    return {
        "ociVersionMin": "1.0.0", "ociVersionMax": defaults.OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": ["ro", "rw", "nosuid", "nodev", "noexec", "bind", "rbind", "private", "rprivate",
                         "shared", "rshared", "slave", "rslave", "relatime", "strictatime"],
        "linux": {"namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
                  "capabilities": list(CAP_NAMES), "cgroup": {"v1": True, "v2": True},
                  "seccomp": {"enabled": True, "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL",
                                                             "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_TRACE",
                                                             "SCMP_ACT_LOG"]}},
    }


def _list(root: str, args: argparse.Namespace) -> None:
    rows = [state.public_state(root, st) for cid in state.list_ids(root) if (st := state.load(root, cid))]
    if args.quiet:
        print("\n".join(r["id"] for r in rows))
    elif args.format == "json":
        print(json.dumps(rows))
    else:
        print("ID\tPID\tSTATUS\tBUNDLE")
        for r in rows:
            print(f"{r['id']}\t{r['pid']}\t{r['status']}\t{r['bundle']}")


if __name__ == "__main__":
    sys.exit(main())
