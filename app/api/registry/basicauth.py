"""Optional client authentication to the cache: an htpasswd file (bcrypt ``$2y$``/``$2b$``, ``{SHA}``).

Off by default (loopback clients are the node itself). The file is read once at start.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import warnings
from pathlib import Path

from app.errors import Category, InvalidArgument

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # libxcrypt on Debian verifies bcrypt, sha512-crypt, md5-crypt


class Htpasswd:
    def __init__(self, entries: dict[str, str]) -> None:
        self._entries = entries
        self._ok: set[str] = set()  # verified Authorization headers: bcrypt is slow by design

    @classmethod
    def load(cls, path: Path) -> Htpasswd:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise InvalidArgument(f"htpasswd {path}: {exc.strerror}", category=Category.CONFIG) from exc
        entries = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, hashed = line.partition(":")
            if not sep or not user or not hashed:
                raise InvalidArgument(f"htpasswd {path}: malformed line for {user or '?'}", category=Category.CONFIG)
            entries[user] = hashed
        return cls(entries)

    def verify(self, user: str, password: str) -> bool:
        hashed = self._entries.get(user)
        if hashed is None:
            return False
        if hashed.startswith("{SHA}"):
            want = base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()
            return hmac.compare_digest(hashed[5:], want)
        if hashed.startswith("$2y$"):  # libxcrypt spells PHP's bcrypt variant $2b$
            got = crypt.crypt(password, "$2b$" + hashed[4:])
            return got is not None and hmac.compare_digest("$2y$" + got[4:], hashed)
        got = crypt.crypt(password, hashed)
        return got is not None and hmac.compare_digest(got, hashed)

    def check(self, authorization: str | None) -> bool:
        if not authorization or not authorization.lower().startswith("basic "):
            return False
        if authorization in self._ok:
            return True
        try:
            user, _, password = base64.b64decode(authorization[6:].strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        if self.verify(user, password):
            if len(self._ok) < 1024:
                self._ok.add(authorization)
            return True
        return False
