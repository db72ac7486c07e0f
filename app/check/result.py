"""Check results and how they are shown (text for people, JSON for tools).

A check is ``ok``, or failed with a severity: ``fatal`` (the daemon cannot work
around it and refuses to start) or ``warn`` (a feature is degraded or a
fallback is used; the detail says which).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass


class Severity(enum.StrEnum):
    FATAL = "fatal"
    WARN = "warn"


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    severity: Severity  # what a failure of this check means (meaningful when not ok)
    detail: str
    fix: str = ""  # a hint, shown when not ok
    id: str = ""  # stable machine name ("userns", "fuse"...), set by run_checks

    @property
    def status(self) -> str:
        if self.ok:
            return "ok"
        return "fail" if self.severity is Severity.FATAL else "warn"

    def to_json(self) -> dict[str, object]:
        out = asdict(self)
        out["severity"] = str(self.severity)
        out["status"] = self.status
        return out


def exit_code(results: Sequence[CheckResult]) -> int:
    """0 when nothing fatal failed (warnings allowed), else 1."""
    return 1 if any(r.status == "fail" for r in results) else 0


_LABELS = {"ok": "[ ok ]", "warn": "[warn]", "fail": "[FAIL]"}


def render_text(results: Sequence[CheckResult]) -> str:
    width = max((len(r.name) for r in results), default=0)
    lines = []
    for r in results:
        lines.append(f"{_LABELS[r.status]} {r.name.ljust(width)}  {r.detail}")
        if not r.ok and r.fix:
            lines.append(f"{' ' * 7}{' ' * width}  fix: {r.fix}")
    counts = {s: sum(1 for r in results if r.status == s) for s in ("ok", "warn", "fail")}
    lines.append(f"{counts['ok']} ok, {counts['warn']} warnings, {counts['fail']} fatal")
    return "\n".join(lines)


def render_json(results: Sequence[CheckResult]) -> str:
    doc = {"ok": exit_code(results) == 0, "results": [r.to_json() for r in results]}
    return json.dumps(doc, indent=2)
