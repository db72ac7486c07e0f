"""Bootstrap metrics: classification of passes and restarts, gauges from records and real certificates.

The daemon end to end (values on /metrics after an apply and a kill) is
tests/vappc/test_intents_daemon.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prometheus_client import REGISTRY

from app.bootstrap import metrics
from app.bootstrap.model import Action, Record
from app.bootstrap.pki import LeafRequest, Pki


def _value(metric: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_pass_results_and_restart_counting() -> None:
    before = {r: _value("vapp_bootstrap_reconcile_passes_total", result=r) for r in ("noop", "changed", "error")}
    metrics.observe_pass(0.01, [Action("probe", "a.b", "probe due"), Action("busy", "a.c", "start in progress")])
    metrics.observe_pass(0.01, [Action("start", "a.b", "not created")])
    metrics.observe_pass(0.01, None)
    for r in ("noop", "changed", "error"):
        assert _value("vapp_bootstrap_reconcile_passes_total", result=r) == before[r] + 1

    comp = "t-metrics.x"
    for reason, action in (("not created", "start"), ("exited (code 1)", "start"), ("gone", "start"),
                           ("spec changed", "restart"), ("unhealthy (3 failed probes)", "restart")):
        metrics.on_event({"event": "action", "action": action, "component": comp, "reason": reason})
    metrics.on_event({"event": "started", "component": comp, "restarts": 1})  # not an action: ignored
    assert _value("vapp_bootstrap_component_restarts_total", component=comp) == 4  # first start not counted


def test_state_gauges_follow_records_and_certificates(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    pki = Pki(pki_dir)
    pki.ensure(["t-ca"], [LeafRequest(name="t-leaf", ca="t-ca", cn="leaf", usages=("server",))], sa_key=False)
    gauges = metrics.StateGauges(pki_dir)
    now = dt.datetime.now(dt.UTC)
    gauges.observe([Record("i.a", intent="i", phase="running"), Record("i.b", intent="i", phase="crashloop")], now)
    assert _value("vapp_bootstrap_components", phase="running") == 1
    assert _value("vapp_bootstrap_components", phase="crashloop") == 1
    assert _value("vapp_bootstrap_components", phase="pending") == 0  # exported before it happens
    leaf = _value("vapp_bootstrap_cert_expiry_seconds", name="t-leaf")
    assert 360 * 86400 < leaf <= 366 * 86400
    assert _value("vapp_bootstrap_cert_expiry_seconds", name="t-ca") > 9 * 365 * 86400

    (pki_dir / "t-leaf.crt").unlink()
    gauges.observe([], now)
    assert REGISTRY.get_sample_value("vapp_bootstrap_cert_expiry_seconds", {"name": "t-leaf"}) is None
    assert _value("vapp_bootstrap_components", phase="running") == 0
