"""Kubeconfig files for admin, controller-manager, scheduler and kubelet.

Each kubeconfig embeds the cluster CA and a client certificate whose key lives
in the PKI as the leaf ``kubeconfig-<name>`` (CN = user, O = groups), so that
renewal is the PKI's ordinary leaf renewal. The file is rewritten only when
what it would contain differs from what is on disk (new certificate after a
renewal, another server URL); otherwise it is left alone (check before mutate).

Layout: ``<state_dir>/kubeconfigs/<name>.conf`` (0600: it holds a private key).
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app.bootstrap.pki import LeafRequest, Pki, _write_atomic

CLUSTER = "kubernetes"


@dataclass(frozen=True)
class KubeconfigRequest:
    name: str
    user: str
    groups: tuple[str, ...]
    server: str
    ca: str = "ca"


def leaf_for(req: KubeconfigRequest) -> LeafRequest:
    return LeafRequest(name=f"kubeconfig-{req.name}", ca=req.ca, cn=req.user, organization=req.groups,
                       usages=("client",))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def build(req: KubeconfigRequest, pki: Pki) -> dict[str, Any]:
    leaf = leaf_for(req)
    context = f"{req.user}@{CLUSTER}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CLUSTER, "cluster": {
            "server": req.server, "certificate-authority-data": _b64(pki.crt(req.ca).read_bytes())}}],
        "users": [{"name": req.user, "user": {
            "client-certificate-data": _b64(pki.crt(leaf.name).read_bytes()),
            "client-key-data": _b64(pki.key(leaf.name).read_bytes())}}],
        "contexts": [{"name": context, "context": {"cluster": CLUSTER, "user": req.user}}],
        "current-context": context,
        "preferences": {},
    }


def ensure(directory: Path, requests: Sequence[KubeconfigRequest], pki: Pki,
           *, now: dt.datetime | None = None) -> list[str]:
    """Issue client certificates and write kubeconfigs that differ; returns the names written."""
    written = []
    directory.mkdir(parents=True, exist_ok=True)
    for req in requests:
        pki.ensure_leaf(leaf_for(req), now=now)
        text = yaml.safe_dump(build(req, pki), sort_keys=False).encode()
        path = directory / f"{req.name}.conf"
        try:
            if path.read_bytes() == text:
                continue
        except FileNotFoundError:
            pass
        _write_atomic(path, text, 0o600)
        written.append(req.name)
    return written
