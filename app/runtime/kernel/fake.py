"""A recording kernel for unit tests: every call is appended to ``calls``; failures are scriptable."""

from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeKernel:
    """Records ``(name, args)`` tuples; ``fail[name] = errno`` makes that call raise ``OSError``."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    fail: dict[str, int] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def _record(self, name: str, *args: Any) -> None:
        self.calls.append((name, args))
        if name in self.fail:
            code = self.fail[name]
            raise OSError(code, f"{name}: {errno.errorcode.get(code, code)} (fake)")

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def unshare(self, flags: int) -> None:
        self._record("unshare", flags)

    def setns(self, fd: int, nstype: int) -> None:
        self._record("setns", fd, nstype)

    def mount(self, source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        self._record("mount", source, target, fstype, flags, data)

    def umount2(self, target: str, flags: int) -> None:
        self._record("umount2", target, flags)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        self._record("pivot_root", new_root, put_old)

    def sethostname(self, name: str) -> None:
        self._record("sethostname", name)

    def setdomainname(self, name: str) -> None:
        self._record("setdomainname", name)

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> int:
        self._record("prctl", option, arg2, arg3)
        return 0

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        self._record("capset", effective, permitted, inheritable)

    def write_file(self, path: str, data: str) -> None:
        self._record("write_file", path, data)
        self.files[path] = data

    def mknod(self, path: str, mode: int, device: int) -> None:
        self._record("mknod", path, mode, device)

    def loopback_up(self) -> None:
        self._record("loopback_up")
