"""The node's PKI: CAs, the service-account key pair and leaf certificates.

Disk layout (``<state_dir>/pki``, keys 0600, certificates 0644)::

    <ca>.crt  <ca>.key            ca, etcd-ca, front-proxy-ca (names come from the profile)
    sa.key    sa.pub              service-account signing key pair (RSA 2048)
    <leaf>.crt <leaf>.key         apiserver, etcd-server, kubelet-client, ...
    <leaf>.crt.old-<serial>       the certificate a renewal replaced (kept, never deleted)

Rules (kubeadm's, plus k3s's rotation):

* **Never overwrite a key.** A key on disk is reused forever; a renewal issues
  a new certificate for the same key. A CA is never re-issued: a CA key without
  its certificate is an error to fix by hand, since leaves may already trust it.
* **Check before mutating.** ``ensure_*`` read what exists and only write
  what is missing, expiring (within ``renew_before``) or missing a SAN the
  profile now asks for. Writes are atomic (temp file, fsync, rename) and the
  key is written before its certificate, so a kill between the two leaves a
  key that the next run simply certifies.

Leaf keys are ECDSA P-256 (fast to generate, accepted by every Kubernetes
component and etcd); the service-account key is RSA as kubeadm makes it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.errors import FailedPrecondition, InvalidArgument, NotFound

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=365)
BACKDATE = dt.timedelta(minutes=5)  # tolerate small clock skew between nodes


@dataclass(frozen=True)
class LeafRequest:
    name: str
    ca: str
    cn: str
    organization: tuple[str, ...] = ()
    usages: tuple[str, ...] = ("server",)
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()


@dataclass(frozen=True)
class CertInfo:
    name: str
    subject: str
    issuer: str
    not_before: dt.datetime
    not_after: dt.datetime
    serial: int
    fingerprint: str
    dns: tuple[str, ...]
    ips: tuple[str, ...]
    is_ca: bool

    def days_left(self, now: dt.datetime) -> float:
        return (self.not_after - now).total_seconds() / 86400

    def to_dict(self, now: dt.datetime) -> dict[str, object]:
        return {"name": self.name, "subject": self.subject, "issuer": self.issuer,
                "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
                "days_left": round(self.days_left(now), 1), "serial": f"{self.serial:x}",
                "sha256": self.fingerprint, "dns": list(self.dns), "ips": list(self.ips), "ca": self.is_ca}


@dataclass
class PkiReport:
    created: list[str] = field(default_factory=list)
    renewed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.renewed)


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def _usage(*, key_cert_sign: bool, key_encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=key_encipherment,
                         data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
                         crl_sign=key_cert_sign, encipher_only=False, decipher_only=False)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _load_key(path: Path) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise FailedPrecondition(f"{path}: not a PEM private key: {exc}", phase="pki") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise FailedPrecondition(f"{path}: unsupported key type {type(key).__name__}", phase="pki")
    return key


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise NotFound(f"no certificate {path.name}", phase="pki") from exc
    except ValueError as exc:
        raise FailedPrecondition(f"{path}: not a PEM certificate: {exc}", phase="pki") from exc


def cert_info(name: str, cert: x509.Certificate) -> CertInfo:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns = tuple(san.get_values_for_type(x509.DNSName))
        ips = tuple(str(i) for i in san.get_values_for_type(x509.IPAddress))
    except x509.ExtensionNotFound:
        dns, ips = (), ()
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(name, cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(),
                    cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number,
                    cert.fingerprint(hashes.SHA256()).hex(), dns, ips, is_ca)


class Pki:
    """One PKI directory. Methods are idempotent; see the module docstring."""

    def __init__(self, root: Path, *, renew_before: dt.timedelta = dt.timedelta(days=90)) -> None:
        if not dt.timedelta(0) <= renew_before < LEAF_VALIDITY / 2:
            # A window as long as the validity would re-issue (and restart users) on every pass.
            raise InvalidArgument(f"renewal window {renew_before.days} days must be under "
                                  f"{LEAF_VALIDITY.days // 2} days", phase="pki")
        self.root = root
        self.renew_before = renew_before

    def crt(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    # --- keys ------------------------------------------------------------------------
    def _ensure_key(self, name: str, *, rsa_bits: int | None = None) -> tuple[PrivateKey, bool]:
        path = self.key(name)
        if path.exists():
            return _load_key(path), False
        key: PrivateKey = (rsa.generate_private_key(65537, rsa_bits) if rsa_bits
                           else ec.generate_private_key(ec.SECP256R1()))
        _write_atomic(path, _key_pem(key), 0o600)
        return key, True

    def ensure_service_account_key(self) -> bool:
        """sa.key + sa.pub; returns True when created."""
        key, created = self._ensure_key("sa", rsa_bits=2048)
        pub = self.root / "sa.pub"
        if created or not pub.exists():
            pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)
            _write_atomic(pub, pem, 0o644)
            return True
        return False

    # --- CAs -------------------------------------------------------------------------
    def ensure_ca(self, name: str, cn: str | None = None, *, now: dt.datetime | None = None) -> bool:
        crt = self.crt(name)
        if crt.exists():
            if not self.key(name).exists():
                raise FailedPrecondition(f"CA {name}: {crt} exists but its key does not", phase="pki")
            return False
        # A key without its certificate is what a kill between the two writes leaves; no leaf
        # can have been signed yet (issuing needs the CA certificate), so certify the key.
        key, _ = self._ensure_key(name)
        now = now or _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn or name)])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE).not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_usage(key_cert_sign=True, key_encipherment=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        _write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return True

    # --- leaves ----------------------------------------------------------------------
    def leaf_status(self, req: LeafRequest, now: dt.datetime) -> str:
        """``ok`` | ``missing`` | ``expiring`` | ``sans`` (missing a wanted SAN) | ``issuer``."""
        crt = self.crt(req.name)
        if not crt.exists():
            return "missing"
        cert = load_cert(crt)
        info = cert_info(req.name, cert)
        if cert.issuer != load_cert(self.crt(req.ca)).subject:
            return "issuer"
        if info.not_after - now <= self.renew_before:
            return "expiring"
        want_ips = {str(ipaddress.ip_address(i)) for i in req.ips}
        if not set(req.dns) <= set(info.dns) or not want_ips <= set(info.ips):
            return "sans"
        return "ok"

    def issue_leaf(self, req: LeafRequest, *, now: dt.datetime | None = None,
                   validity: dt.timedelta = LEAF_VALIDITY) -> None:
        """Issue (or re-issue) the certificate for ``req``, keeping any existing key."""
        now = now or _now()
        ca_key = _load_key(self.key(req.ca))
        ca_cert = load_cert(self.crt(req.ca))
        key, _ = self._ensure_key(req.name)
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in req.organization]
        subject = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, req.cn)])
        ekus = [ExtendedKeyUsageOID.SERVER_AUTH] if "server" in req.usages else []
        ekus += [ExtendedKeyUsageOID.CLIENT_AUTH] if "client" in req.usages else []
        try:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in req.dns]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in req.ips]
        except ValueError as exc:
            raise InvalidArgument(f"certificate {req.name}: bad SAN: {exc}", phase="pki") from exc
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            # keyEncipherment only means something for RSA key transport.
            .add_extension(_usage(key_cert_sign=False, key_encipherment=isinstance(key, rsa.RSAPrivateKey)),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        crt = self.crt(req.name)
        if crt.exists():  # keep the replaced certificate: a renewal must be auditable and reversible
            old = load_cert(crt)
            os.replace(crt, crt.with_name(f"{crt.name}.old-{old.serial_number:x}"))
        _write_atomic(crt, cert.public_bytes(serialization.Encoding.PEM), 0o644)

    def ensure_leaf(self, req: LeafRequest, *, now: dt.datetime | None = None) -> str:
        """Issue when missing, expiring or short of SANs; returns the status that was acted on."""
        now = now or _now()
        status = self.leaf_status(req, now)
        if status != "ok":
            self.issue_leaf(req, now=now)
        return status

    # --- whole profile ---------------------------------------------------------------
    def ensure(self, cas: Sequence[str], leaves: Sequence[LeafRequest], *, sa_key: bool,
               now: dt.datetime | None = None) -> PkiReport:
        now = now or _now()
        report = PkiReport()
        self.root.mkdir(parents=True, exist_ok=True, mode=0o755)
        for ca in cas:
            if self.ensure_ca(ca, now=now):
                report.created.append(ca)
        if sa_key and self.ensure_service_account_key():
            report.created.append("sa")
        for req in leaves:
            status = self.ensure_leaf(req, now=now)
            if status == "missing":
                report.created.append(req.name)
            elif status != "ok":
                report.renewed.append(req.name)
        return report

    def request_from_cert(self, name: str) -> LeafRequest:
        """Rebuild the request of an existing leaf (for ``certs renew NAME``)."""
        cert = load_cert(self.crt(name))
        info = cert_info(name, cert)
        if info.is_ca:
            raise InvalidArgument(f"{name} is a CA: CAs are never re-issued", phase="pki")
        ca = next((p.stem for p in self.root.glob("*.crt")
                   if p.stem != name and load_cert(p).subject == cert.issuer
                   and cert_info(p.stem, load_cert(p)).is_ca), None)
        if ca is None:
            raise FailedPrecondition(f"{name}: its issuing CA is not in {self.root}", phase="pki")
        try:
            ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            ekus = x509.ExtendedKeyUsage([])
        usages = tuple(u for u, oid in (("server", ExtendedKeyUsageOID.SERVER_AUTH),
                                       ("client", ExtendedKeyUsageOID.CLIENT_AUTH)) if oid in ekus)
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return LeafRequest(name, ca, str(cn[0].value) if cn else name, tuple(str(o.value) for o in orgs),
                           usages or ("server",), info.dns, info.ips)

    def renew(self, names: Sequence[str] | None = None, *, now: dt.datetime | None = None,
              force: bool = False) -> list[str]:
        """Re-issue the named leaves (default: every leaf inside the renewal window)."""
        now = now or _now()
        out = []
        leaves = [c for c in self.list() if not c.is_ca and c.name != "sa"]
        if names:
            known = {c.name for c in self.list()}
            for n in names:
                if n not in known:
                    raise NotFound(f"no certificate {n!r} in {self.root}", phase="pki")
            leaves = [c for c in leaves if c.name in names]
            if any(c.is_ca for c in self.list() if c.name in names):
                raise InvalidArgument("CAs are never re-issued", phase="pki")
        for info in leaves:
            if force or names or info.not_after - now <= self.renew_before:
                self.issue_leaf(self.request_from_cert(info.name), now=now)
                out.append(info.name)
        return out

    def list(self) -> list[CertInfo]:
        if not self.root.is_dir():
            return []
        return [cert_info(p.stem, load_cert(p)) for p in sorted(self.root.glob("*.crt"))]

    def fingerprint(self, name: str) -> str | None:
        try:
            return load_cert(self.crt(name)).fingerprint(hashes.SHA256()).hex()
        except NotFound:
            return None
