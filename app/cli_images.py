"""``vapp-core images``: list, pull (a progress bar per layer), rm, inspect, tag — via the admin API.

The lead hooks :func:`add_parser` into ``app/cli.py``. The daemon is reached at
``--admin-url`` (default ``http://<admin_listen>``) with the bearer token from
``--token``, ``$VAPP_ADMIN_TOKEN`` or ``<state_dir>/admin-token``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

import httpx

from app.errors import Category, Unavailable, VappError

BAR_WIDTH = 30


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("images", help="list, pull, remove and inspect images (through the daemon)")
    p.add_argument("--config", type=Path, help="TOML config file (to find admin_listen and state_dir)")
    p.add_argument("--admin-url", help="admin API base URL (default http://<admin_listen>)")
    p.add_argument("--token", help="admin bearer token (default $VAPP_ADMIN_TOKEN or <state_dir>/admin-token)")
    sub = p.add_subparsers(dest="images_command", required=True)
    s = sub.add_parser("list", aliases=["ls"], help="list images")
    s.add_argument("--json", action="store_true")
    s = sub.add_parser("pull", help="pull an image, one progress bar per layer")
    s.add_argument("reference")
    s.add_argument("--json", action="store_true", help="print the NDJSON progress stream as is")
    s = sub.add_parser("rm", help="remove tags or images")
    s.add_argument("names", nargs="+")
    s.add_argument("--force", action="store_true", help="remove the image even when other tags point at it")
    s = sub.add_parser("inspect", help="print an image record as JSON")
    s.add_argument("name")
    s = sub.add_parser("tag", help="add a name to an image")
    s.add_argument("source")
    s.add_argument("target")
    p.set_defaults(func=cmd_images)


# --- pure rendering ----------------------------------------------------------------------
def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}GB"


def render_layer(ev: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """One line: short digest, status, bar, bytes."""
    done, total = int(ev.get("done") or 0), int(ev.get("total") or 0)
    frac = min(1.0, done / total) if total else (1.0 if ev.get("status") in ("done", "cached") else 0.0)
    filled = int(frac * width)
    bar = "=" * filled + (">" if filled < width else "") + " " * max(0, width - filled - 1)
    short = str(ev.get("digest", ""))[7:19]
    return f"{short:12} {ev.get('status', ''):11} [{bar}] {human(done)}/{human(total)}"


def render(layers: dict[str, dict[str, Any]], width: int = BAR_WIDTH) -> list[str]:
    return [render_layer(ev, width) for ev in layers.values()]


def render_list(records: list[dict[str, Any]]) -> list[str]:
    rows = [("IMAGE ID", "TAG", "SIZE", "PLATFORM")]
    for r in records:
        for name in r.get("tags") or ["<none>"]:
            rows.append((r["id"][7:19], name, human(r.get("size", 0)), r.get("platform", "")))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]


# --- client ------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> httpx.Client:
    from app.config import load_settings

    settings = load_settings(args.config) if (args.admin_url is None or args.token is None) else None
    url = args.admin_url or f"http://{settings.admin_listen}"  # type: ignore[union-attr]
    token = args.token or os.environ.get("VAPP_ADMIN_TOKEN")
    if token is None and settings is not None:
        if settings.admin_token is not None:
            token = settings.admin_token.get_secret_value()
        else:
            try:
                token = (settings.state_dir / "admin-token").read_text().strip()
            except OSError:
                token = None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(60.0, read=None))


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        try:
            err = resp.json().get("error", {})
        except ValueError:
            err = {}
        raise _Remote(err.get("message") or f"HTTP {resp.status_code}", resp.status_code)
    return resp.json()


class _Remote(VappError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message, category=Category.IMAGE)
        self.status = status


def cmd_images(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    try:
        with _client(args) as client:
            return _dispatch(args, client, out)
    except httpx.TransportError as exc:
        raise Unavailable(f"cannot reach the daemon's admin API: {exc}") from exc


def _dispatch(args: argparse.Namespace, client: httpx.Client, out: TextIO) -> int:
    cmd = args.images_command
    if cmd in ("list", "ls"):
        records = _check(client.get("/v1/images"))
        print(json.dumps(records, indent=2) if args.json else "\n".join(render_list(records)), file=out)
        return 0
    if cmd == "inspect":
        print(json.dumps(_check(client.get(f"/v1/images/{args.name}")), indent=2), file=out)
        return 0
    if cmd == "tag":
        _check(client.post("/v1/images/tag", json={"source": args.source, "target": args.target}))
        return 0
    if cmd == "rm":
        code = 0
        for name in args.names:
            try:
                removed = _check(client.delete(f"/v1/images/{name}", params={"force": args.force}))["removed"]
                for item in removed:
                    print(f"removed {item}", file=out)
            except _Remote as exc:
                print(f"vapp-core: {name}: {exc.message}", file=sys.stderr)
                code = 1
        return code
    return _pull(args, client, out)


def _pull(args: argparse.Namespace, client: httpx.Client, out: TextIO) -> int:
    layers: dict[str, dict[str, Any]] = {}
    tty = out.isatty() and not args.json
    drawn = 0
    with client.stream("POST", "/v1/images/pull", params={"stream": "true"},
                       json={"reference": args.reference}) as resp:  # fmt: skip
        if resp.status_code >= 400:
            resp.read()
            _check(resp)
        for raw in resp.iter_lines():
            if not raw.strip():
                continue
            if args.json:
                print(raw, file=out, flush=True)
            msg = json.loads(raw)
            if msg.get("msg") == "Progress" and msg.get("digest") and msg.get("status") != "resolving":
                prev = layers.get(msg["digest"])
                layers[msg["digest"]] = msg
                if args.json:
                    continue
                if tty:
                    if drawn:
                        out.write(f"\x1b[{drawn}F")
                    lines = render(layers)
                    out.write("".join(f"\x1b[2K{line}\n" for line in lines))
                    out.flush()
                    drawn = len(lines)
                elif prev is None or prev.get("status") != msg.get("status"):
                    print(render_layer(msg), file=out, flush=True)
            elif msg.get("msg") == "Ok":
                if not args.json:
                    img = msg["image"]
                    print(f"pulled {args.reference} ({img['id']})", file=out)
                return 0
            elif msg.get("msg") == "Error":
                print(f"vapp-core: pull failed: {msg.get('message')}", file=sys.stderr)
                return 75 if msg.get("is_retryable") else 1
    print("vapp-core: pull stream ended without a result", file=sys.stderr)
    return 1
