"""Prometheus metrics of the bootstrap loop, on the default registry (served at the admin ``/metrics``).

===============================================  =====================================================
``vapp_bootstrap_reconcile_passes_total{result}``  loop passes: ``noop`` (nothing mutated), ``changed``,
                                                   ``error`` (the pass raised)
``vapp_bootstrap_reconcile_duration_seconds``      one pass: intent sync, render, PKI, observe, plan, act
``vapp_bootstrap_component_restarts_total{component}``  restarts the loop made (a crash, an unhealthy
                                                   component, a spec change), not first starts
``vapp_bootstrap_components{phase}``               components per lifecycle phase (see model.py)
``vapp_bootstrap_cert_expiry_seconds{name}``       seconds until each certificate in the PKI dir expires
===============================================  =====================================================

The loop calls :func:`observe_pass` and :func:`observe_state` after each pass and feeds
its events through :func:`on_event`; nothing here does more than a ``stat`` per
certificate on a no-op pass (certificates are parsed again only when their file changes).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from app.bootstrap.model import Action, Record
from app.bootstrap.pki import load_cert
from app.errors import VappError

PASSES = Counter("vapp_bootstrap_reconcile_passes_total", "Bootstrap reconcile passes by result", ["result"])
PASS_SECONDS = Histogram(
    "vapp_bootstrap_reconcile_duration_seconds", "Duration of one bootstrap reconcile pass",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RESTARTS = Counter("vapp_bootstrap_component_restarts_total", "Component restarts made by the loop", ["component"])
COMPONENTS = Gauge("vapp_bootstrap_components", "Bootstrap components by phase", ["phase"])
CERT_EXPIRY = Gauge("vapp_bootstrap_cert_expiry_seconds", "Seconds until the certificate expires", ["name"])

# Always exported (0 when empty), so a dashboard sees a phase before it first happens.
PHASES = ("pending", "starting", "running", "unhealthy", "backoff", "crashloop", "blocked", "exited")
_RESTART_REASONS = ("exited", "gone", "unhealthy")  # a "start" for these is a restart (plan.py)


def observe_pass(seconds: float, actions: Sequence[Action] | None) -> None:
    """One pass ended: ``actions`` is its plan, ``None`` when it raised."""
    PASS_SECONDS.observe(seconds)
    if actions is None:
        result = "error"
    else:
        result = "changed" if any(a.mutating and a.kind != "probe" for a in actions) else "noop"
    PASSES.labels(result=result).inc()


def on_event(event: Mapping[str, Any]) -> None:
    """Count restarts from the loop's ``action`` events (the same stream as progress)."""
    if event.get("event") != "action":
        return
    kind, reason = event.get("action"), str(event.get("reason", ""))
    if kind == "restart" or (kind == "start" and reason.startswith(_RESTART_REASONS)):
        RESTARTS.labels(component=str(event.get("component"))).inc()


class StateGauges:
    """Sets the component and certificate gauges; remembers what it set, to clear what vanished."""

    def __init__(self, pki_dir: Path) -> None:
        self.pki_dir = pki_dir
        self._certs: dict[Path, tuple[int, float]] = {}  # path -> (mtime_ns, not_after timestamp)
        self._phases: set[str] = set(PHASES)
        self._lock = threading.Lock()

    def observe(self, records: Iterable[Record] | None, now: dt.datetime | None = None) -> None:
        with self._lock:
            self._components(records or ())
            self._cert_expiry(now or dt.datetime.now(dt.UTC))

    def _components(self, records: Iterable[Record]) -> None:
        counts: dict[str, int] = dict.fromkeys(self._phases, 0)
        for rec in records:
            counts[rec.phase] = counts.get(rec.phase, 0) + 1
        self._phases |= set(counts)
        for phase, n in counts.items():
            COMPONENTS.labels(phase=phase).set(n)

    def _cert_expiry(self, now: dt.datetime) -> None:
        seen: dict[Path, tuple[int, float]] = {}
        if self.pki_dir.is_dir():
            for path in self.pki_dir.glob("*.crt"):
                try:
                    mtime = path.stat().st_mtime_ns
                    hit = self._certs.get(path)
                    if hit is None or hit[0] != mtime:
                        hit = (mtime, load_cert(path).not_valid_after_utc.timestamp())
                except (OSError, ValueError, VappError):
                    continue  # being replaced, or not a certificate: the next pass sees it
                seen[path] = hit
                CERT_EXPIRY.labels(name=path.stem).set(hit[1] - now.timestamp())
        for gone in set(self._certs) - set(seen):
            with contextlib.suppress(KeyError):
                CERT_EXPIRY.remove(gone.stem)
        self._certs = seen
