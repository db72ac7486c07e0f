"""A token server for docker-registry's ``auth.token`` mode: RS256 JWTs with an x5c chain.

The registry trusts ``cert.pem`` (its ``rootcertbundle``); tokens carry that same
self-signed certificate in their ``x5c`` header and are signed with its key.
"""

from __future__ import annotations

import base64
import collections
import datetime
import json
import time
import urllib.parse
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

ISSUER = "vapp-test-issuer"
SERVICE = "vapp-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """ASGI app: ``GET /token?service=..&scope=..`` -> ``{"token", "expires_in"}``; counts requests."""

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, expires_in: int = 300) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vapp-test-token")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        workdir.mkdir(parents=True, exist_ok=True)
        self.cert_path = workdir / "token-cert.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.users = users or {}
        self.expires_in = expires_in
        self.requests: list[dict[str, Any]] = []
        self.scopes: collections.Counter[str] = collections.Counter()

    def registry_auth(self, realm: str) -> dict[str, Any]:
        return {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER,
                          "rootcertbundle": str(self.cert_path)}}  # fmt: skip

    def issue(self, scopes: list[str], subject: str) -> str:
        access = []
        for scope in scopes:
            typ, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": typ, "name": name, "actions": actions.split(",")})
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + self.expires_in, "nbf": now - 10,
                  "iat": now, "jti": f"{now}-{len(self.requests)}", "access": access}  # fmt: skip
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}".encode()
        sig = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return signing_input.decode() + "." + _b64(sig)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        query = urllib.parse.parse_qs(scope.get("query_string", b"").decode())
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append({"query": query, "authorization": headers.get("authorization")})
        subject = "anonymous"
        if self.users:
            authz = headers.get("authorization", "")
            try:
                user, _, pw = base64.b64decode(authz.removeprefix("Basic ")).decode().partition(":")
            except ValueError:
                user, pw = "", ""
            if self.users.get(user) != pw or not authz.startswith("Basic "):
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            subject = user
        scopes = query.get("scope", [])
        for s in scopes:
            self.scopes[s] += 1
        body = json.dumps({"token": self.issue(scopes, subject), "expires_in": self.expires_in}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
