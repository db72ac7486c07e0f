"""The real daemon: /v1/images through the wiring (cache fetcher, probed snapshotter), restart keeps images."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.daemon import DaemonProcess


def _config(tmp_path: Path, registry) -> list[str]:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "vapp.toml"
    cfg.write_text(f'[blob.upstreams."{registry.host}"]\nurl = "{registry.url}"\n')
    return ["--config", str(cfg)]


def test_daemon_pull_inspect_restart(tmp_path: Path, registry, test_images) -> None:  # type: ignore[no-untyped-def]
    img = test_images.multilayer
    args = _config(tmp_path, registry)
    with DaemonProcess(tmp_path / "d", args=args) as d, d.client() as c:
        with c.stream("POST", "/v1/images/pull", params={"stream": "true"}, json={"reference": img.ref},
                      timeout=120) as s:  # fmt: skip
            lines = [json.loads(x) for x in s.iter_lines() if x]
        assert lines[-1]["msg"] == "Ok", lines[-1]
        assert lines[-1]["image"]["id"] == img.config_digest
        layers = d.state_dir / "snapshots" / "layers"
        assert len([p for p in layers.iterdir() if not p.name.startswith(".")]) == len(img.layers)
    with DaemonProcess(tmp_path / "d", args=args) as d, d.client() as c:
        r = c.get(f"/v1/images/{img.ref}")
        assert r.status_code == 200 and r.json()["id"] == img.config_digest
        r = c.delete(f"/v1/images/{img.config_digest}")
        assert r.status_code == 200
        assert c.get("/v1/images").json() == []
        assert [p for p in (d.state_dir / "snapshots" / "layers").iterdir() if not p.name.startswith(".")] == []
