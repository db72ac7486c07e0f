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


def test_rootless_daemon_pull(tmp_path: Path, registry, test_images, unpriv_user) -> None:  # type: ignore[no-untyped-def]
    """An unprivileged daemon: layers extracted in the mapped namespace, owned by subordinate IDs."""
    import os
    import shutil
    import subprocess
    import tempfile

    img = test_images.multilayer
    work = Path(tempfile.mkdtemp(prefix="vapp-img-daemon-", dir="/tmp"))  # pytest's tmp is root-only
    os.chown(work, unpriv_user.uid, unpriv_user.gid)
    cfg = work / "vapp.toml"
    cfg.write_text(f'[blob.upstreams."{registry.host}"]\nurl = "{registry.url}"\n')
    os.chown(cfg, unpriv_user.uid, unpriv_user.gid)
    u = unpriv_user
    try:
        with DaemonProcess(work / "d", user=u, args=["--config", str(cfg)]) as d, d.client() as c:
            r = c.post("/v1/images/pull", json={"reference": img.ref}, timeout=120)
            assert r.status_code == 200, r.text
            chains = r.json()["chain_ids"]
            fs = d.state_dir / "snapshots" / "layers" / chains[0][7:] / "fs"
            owners = {p.lstat().st_uid for p in fs.rglob("*")}
            assert owners <= {u.uid, *range(u.subuid_start, u.subuid_start + 65536)}
            assert owners - {u.uid}, "container IDs other than 0 land in the subordinate range"
            assert c.delete(f"/v1/images/{img.ref}").status_code == 200
            assert not fs.exists(), "removed through the namespace helper"
    finally:
        subprocess.run(
            ["unshare", "--user", "--map-root-user", f"--map-users={u.subuid_start},1,65536",
             f"--map-groups={u.subgid.start},1,65536", "rm", "-rf", str(work)],
            user=u.uid, group=u.gid, check=False, cwd="/",
        )  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
