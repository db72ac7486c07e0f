"""``vappc``: the command line over :class:`app.vappc.client.Client`.

Exit codes: 0 success, 1 a non-retryable error, 2 usage, 75 (EX_TEMPFAIL) a
retryable error (Runtime, Image, Network, Io, Timeout, connection refused).
``--json`` prints the raw ``Ok`` data as JSON on stdout (progress as NDJSON on
stderr) for scripts; otherwise output is for people: a live progress bar on a
terminal, a table for ``ls``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import yaml

from app.errors import VappError
from app.services.app_types import AppStatus, Progress
from app.vappc.client import DEFAULT_SOCKET, Client

EX_TEMPFAIL = 75


class ProgressBar:
    """One redrawn line on a terminal; one line per event otherwise."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.tty = out.isatty()
        self.drawn = False

    def __call__(self, ev: Progress) -> None:
        if self.as_json:
            data = {k: v for k, v in vars(ev).items() if v is not None}
            self.out.write(json.dumps({"msg": "Progress", **data}) + "\n")
            return
        who = f"{ev.instance_name}: " if ev.instance_name else ""
        what = f"{ev.phase}: " if ev.phase else ""
        task = f" [{ev.task_name}]" if ev.task_name else ""
        text = f"{who}{what}{ev.message}{task}"
        if self.tty:
            filled = ev.percentage * 30 // 100
            bar = "#" * filled + "." * (30 - filled)
            self.out.write(f"\r\x1b[K[{bar}] {ev.percentage:3d}% {text}"[:200])
            self.drawn = True
        else:
            self.out.write(f"{ev.percentage:3d}% {text}\n")
        self.out.flush()

    def done(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.drawn = False


def state_text(status: AppStatus) -> str:
    if status.phase == "Failed":
        return f"Failed: {status.reason}"
    return status.phase


def _load_json(path: str) -> Any:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text)


def _parse_records(args: argparse.Namespace) -> list[dict[str, str]]:
    records: list[dict[str, str]] = []
    if args.file:
        data = _load_json(args.file)
        records += data["records"] if isinstance(data, dict) else data
    for item in args.record or []:
        ip, sep, host = item.partition("=")
        if not sep:
            raise SystemExit(f"vappc dns: --record wants IP=HOSTNAME, got {item!r}")
        records.append({"ip": ip, "hostname": host})
    return records


def _print_table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    bar = ProgressBar(err, args.json)
    with Client(args.socket, timeout=args.timeout) as c:
        result: Any
        try:
            match args.command:
                case "ping":
                    c.ping()
                    result, text = None, "pong"
                case "version":
                    result = c.version()
                    text = f"protocol {result['protocol']}; features: {', '.join(result['features'])}"
                case "start":
                    h = c.start_app(_load_json(args.spec), progress=bar)
                    result, text = {"app_id": h.app_id, "name": h.name}, f"{h.app_id} ({h.name}) Running"
                case "group":
                    g = c.start_group(_load_json(args.spec), progress=bar)
                    result = {"group_name": g.group_name, "handles": [vars(h) for h in g.handles]}
                    text = f"{g.group_name}: started {', '.join(h.app_id for h in g.handles) or 'none'}"
                    if g.error is not None:
                        result["error"] = g.error.message
                        bar.done()
                        _emit(args, out, result, text)
                        raise g.error
                case "stop":
                    c.stop_app(args.app_id, grace=args.grace)
                    result, text = None, f"{args.app_id} stopped"
                case "state":
                    status = c.app_state(args.app_id)
                    result, text = _status_json(status), state_text(status)
                case "ls":
                    apps = c.list_apps()
                    result = [{"app_id": a.app_id, "name": a.name, "state": _status_json(a.status)} for a in apps]
                    rows = [["APP ID", "NAME", "STATE"]] + [[a.app_id, a.name, state_text(a.status)] for a in apps]
                    if args.json:
                        _emit(args, out, result, None)
                    else:
                        _print_table(rows, out)
                    return 0
                case "ip":
                    ip = c.interface_ip(args.interface)
                    result, text = {"interface": args.interface, "ip": ip}, ip or f"{args.interface}: no address"
                    if ip is None:
                        _emit(args, out, result, text)
                        return 1
                case "dns":
                    count = c.update_dns_records(_parse_records(args))
                    result, text = {"count": count}, f"{count} records written"
                case "diag":
                    result = c.diagnostic()
                    text = "\n".join(f"== {k}\n{v}" for k, v in result.items())
                case "intent":
                    result, text = _intent(c, args, bar)
                case _:
                    raise SystemExit(2)
        finally:
            bar.done()
    _emit(args, out, result, text)
    return 0


def _load_intent(path: str) -> Any:
    """An intent file: YAML (as in the intents directory) or JSON ('-': stdin)."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return yaml.safe_load(text)


def _intent(c: Client, args: argparse.Namespace, bar: ProgressBar) -> tuple[Any, str]:
    if args.intent_command == "apply":
        kw = {"apply_timeout": args.apply_timeout} if args.apply_timeout else {}
        res = c.apply_intent(_load_intent(args.file), progress=bar, **kw)
        parts = [f"{x['component']} {x['phase']}" for x in res["components"]]
        return res, f"{res['intent']['name']}: " + (", ".join(parts) or "no components")
    if args.intent_command == "rm":
        c.delete_intent(args.name)
        return None, f"intent {args.name} deleted"
    res = c.list_intents()
    rows = [["INTENT", "PROFILE", "SOURCE", "GEN", "ENABLED"]] + [
        [i["name"], i["profile"], i["source"], str(i["generation"]), str(i["enabled"]).lower()]
        for i in res["intents"]]
    comps = [["COMPONENT", "PHASE", "HEALTHY", "RESTARTS", "LAST ERROR"]] + [
        [x["component"], x["phase"], str(x["healthy"]).lower(), str(x["restarts"]), x["last_error"] or ""]
        for x in res["components"]]
    return res, _table(rows) + "\n" + _table(comps).rstrip("\n")


def _table(rows: list[list[str]]) -> str:
    buf = io.StringIO()
    _print_table(rows, buf)
    return buf.getvalue()


def _status_json(status: AppStatus) -> Any:
    return {"Failed": {"reason": status.reason}} if status.phase == "Failed" else status.phase


def _emit(args: argparse.Namespace, out: TextIO, result: Any, text: str | None) -> None:
    if args.json:
        out.write(json.dumps(result, indent=2) + "\n")
    elif text is not None:
        out.write(text + "\n")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="vappc", description="Talk to the vapp-core agent socket.")
    ap.add_argument("--socket", default=os.environ.get("VAPPC_SOCKET", DEFAULT_SOCKET),
                    help="socket path or vsock:CID:PORT (default $VAPPC_SOCKET or /tmp/vappc)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds for quick commands (default 30)")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("ping", help="check the daemon answers")
    sub.add_parser("version", help="protocol version and features")
    start = sub.add_parser("start", help="start an app from an AppSpec JSON file ('-' for stdin)")
    start.add_argument("spec")
    group = sub.add_parser("group", help="start a container group from a JSON file")
    group.add_argument("spec")
    stop = sub.add_parser("stop", help="stop an app (graceful, then killed)")
    stop.add_argument("app_id")
    stop.add_argument("--grace", type=float, default=None, help="seconds before SIGKILL")
    state = sub.add_parser("state", help="an app's state")
    state.add_argument("app_id")
    sub.add_parser("ls", help="list apps")
    ip = sub.add_parser("ip", help="an interface's IP (a trailing * matches a prefix)")
    ip.add_argument("interface")
    dns = sub.add_parser("dns", help="replace the DNS records")
    dns.add_argument("file", nargs="?", help='JSON: {"records":[{"ip","hostname"}]} or a list')
    dns.add_argument("-r", "--record", action="append", metavar="IP=HOSTNAME")
    sub.add_parser("diag", help="node diagnostics")
    intent = sub.add_parser("intent", help="bootstrap intents: apply FILE | list | rm NAME")
    isub = intent.add_subparsers(dest="intent_command", required=True)
    iapply = isub.add_parser("apply", help="store and converge an intent (YAML or JSON file, '-' for stdin)")
    iapply.add_argument("file")
    iapply.add_argument("--apply-timeout", type=float, default=None, help="seconds to converge (default 300)")
    isub.add_parser("list", help="intents and their components")
    irm = isub.add_parser("rm", help="delete an intent (its components are stopped and removed)")
    irm.add_argument("name")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args, sys.stdout, sys.stderr)
    except VappError as exc:
        phase = f" ({exc.phase})" if exc.phase else ""
        sys.stderr.write(f"vappc: {exc.category.value}{phase}: {exc.message}\n")
        return EX_TEMPFAIL if exc.retryable else 1
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"vappc: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
