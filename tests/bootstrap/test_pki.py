"""PKI checked by OpenSSL itself: chains, SANs, key usages; never overwritten; renewal window."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

import pytest

from app.bootstrap.pki import LeafRequest, Pki
from app.errors import InvalidArgument, NotFound

NOW = dt.datetime.now(dt.UTC)


def openssl(*args: str) -> str:
    return subprocess.run(["openssl", *args], check=True, capture_output=True, text=True).stdout


def text(path: Path) -> str:
    return openssl("x509", "-in", str(path), "-noout", "-text")


def verify(ca: Path, leaf: Path, purpose: str | None = None, at: dt.datetime | None = None) -> None:
    args = ["verify", "-CAfile", str(ca)]
    if at is not None:
        args += ["-attime", str(int(at.timestamp()))]
    if purpose:
        args += ["-purpose", purpose]
    out = subprocess.run(["openssl", *args, str(leaf)], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith(": OK"), out.stdout + out.stderr


SERVER = LeafRequest("etcd-server", "etcd-ca", "node1", (), ("server", "client"), ("localhost", "node1"),
                     ("127.0.0.1", "10.0.0.5"))
CLIENT = LeafRequest("admin", "ca", "kubernetes-admin", ("system:masters",), ("client",))


def make(tmp_path: Path, **kw: object) -> Pki:
    pki = Pki(tmp_path / "pki", **kw)  # type: ignore[arg-type]
    pki.ensure(["ca", "etcd-ca"], [SERVER, CLIENT], sa_key=True, now=NOW)
    return pki


def test_chains_sans_and_usages_as_openssl_sees_them(tmp_path: Path) -> None:
    pki = make(tmp_path)
    verify(pki.crt("etcd-ca"), pki.crt("etcd-server"), "sslserver")
    verify(pki.crt("etcd-ca"), pki.crt("etcd-server"), "sslclient")
    verify(pki.crt("ca"), pki.crt("admin"), "sslclient")
    # Cross-CA: the etcd server cert is not trusted by the cluster CA.
    bad = subprocess.run(["openssl", "verify", "-CAfile", str(pki.crt("ca")), str(pki.crt("etcd-server"))],
                         capture_output=True, text=True)
    assert bad.returncode != 0
    srv = text(pki.crt("etcd-server"))
    assert "DNS:localhost, DNS:node1, IP Address:127.0.0.1, IP Address:10.0.0.5" in srv
    assert "TLS Web Server Authentication, TLS Web Client Authentication" in srv
    assert "Digital Signature" in srv and "CA:FALSE" in srv
    ca = text(pki.crt("ca"))
    assert "CA:TRUE" in ca and "Certificate Sign, CRL Sign" in ca
    adm = text(pki.crt("admin"))
    assert "O = system:masters, CN = kubernetes-admin" in adm
    assert "TLS Web Client Authentication" in adm and "Server Authentication" not in adm
    # Keys are private; the service-account pair matches.
    assert os.stat(pki.key("admin")).st_mode & 0o777 == 0o600
    assert os.stat(pki.root / "sa.key").st_mode & 0o777 == 0o600
    pub_from_key = openssl("pkey", "-in", str(pki.root / "sa.key"), "-pubout")
    assert pub_from_key == (pki.root / "sa.pub").read_text()
    # Leaf keys match their certificates.
    assert openssl("x509", "-in", str(pki.crt("admin")), "-noout", "-pubkey") == \
        openssl("pkey", "-in", str(pki.key("admin")), "-pubout")


def test_existing_material_is_never_overwritten(tmp_path: Path) -> None:
    pki = make(tmp_path)
    before = {p.name: p.read_bytes() for p in pki.root.iterdir()}
    report = pki.ensure(["ca", "etcd-ca"], [SERVER, CLIENT], sa_key=True, now=NOW)
    assert not report.changed
    assert {p.name: p.read_bytes() for p in pki.root.iterdir()} == before


def test_kill_between_key_and_certificate_is_completed_with_the_same_key(tmp_path: Path) -> None:
    pki = make(tmp_path)
    key = pki.key("admin").read_bytes()
    pki.crt("admin").unlink()
    report = pki.ensure(["ca", "etcd-ca"], [SERVER, CLIENT], sa_key=True, now=NOW)
    assert report.created == ["admin"]
    assert pki.key("admin").read_bytes() == key
    verify(pki.crt("ca"), pki.crt("admin"))


def test_renewal_inside_window_keeps_key_and_archives_old_cert(tmp_path: Path) -> None:
    pki = make(tmp_path, renew_before=dt.timedelta(days=90))
    key = pki.key("etcd-server").read_bytes()
    old = pki.crt("etcd-server").read_bytes()
    # 300 days later: the 1-year certificate has < 90 days left.
    later = NOW + dt.timedelta(days=300)
    assert pki.leaf_status(SERVER, later) == "expiring"
    assert pki.leaf_status(SERVER, NOW + dt.timedelta(days=200)) == "ok"
    report = pki.ensure(["ca", "etcd-ca"], [SERVER, CLIENT], sa_key=True, now=later)
    assert sorted(report.renewed) == ["admin", "etcd-server"] and not report.created
    assert pki.key("etcd-server").read_bytes() == key
    assert pki.crt("etcd-server").read_bytes() != old
    archived = list(pki.root.glob("etcd-server.crt.old-*"))
    assert len(archived) == 1 and archived[0].read_bytes() == old
    verify(pki.crt("etcd-ca"), pki.crt("etcd-server"), at=later)


def test_missing_san_triggers_reissue(tmp_path: Path) -> None:
    pki = make(tmp_path)
    wider = LeafRequest(**{**SERVER.__dict__, "dns": (*SERVER.dns, "etcd.example")})
    assert pki.leaf_status(wider, NOW) == "sans"
    assert pki.ensure_leaf(wider, now=NOW) == "sans"
    assert "DNS:etcd.example" in text(pki.crt("etcd-server"))


def test_manual_renew_and_listing(tmp_path: Path) -> None:
    pki = make(tmp_path)
    assert pki.renew(now=NOW) == []  # nothing inside the window
    serial = {c.name: c.serial for c in pki.list()}
    assert pki.renew(["admin"], now=NOW) == ["admin"]
    after = {c.name: c for c in pki.list()}
    assert after["admin"].serial != serial["admin"]
    assert after["admin"].dns == () and "kubernetes-admin" in after["admin"].subject
    assert "O=system:masters" in after["admin"].subject
    assert after["ca"].is_ca and after["ca"].days_left(NOW) > 3600
    with pytest.raises(InvalidArgument, match="never re-issued"):
        pki.renew(["ca"])
    with pytest.raises(NotFound):
        pki.renew(["nope"])
    verify(pki.crt("ca"), pki.crt("admin"), "sslclient")


def test_ca_without_key_is_an_error_not_a_new_ca(tmp_path: Path) -> None:
    pki = make(tmp_path)
    pki.key("ca").unlink()
    from app.errors import FailedPrecondition

    with pytest.raises(FailedPrecondition, match="key does not"):
        pki.ensure(["ca"], [], sa_key=False)


def test_bad_san_is_a_clear_error(tmp_path: Path) -> None:
    pki = make(tmp_path)
    with pytest.raises(InvalidArgument, match="bad SAN"):
        pki.issue_leaf(LeafRequest("x", "ca", "x", ips=("not-an-ip",)))
