"""Pure parsing of OCI mount ``options`` into mount(2) flags, propagation and data."""

from __future__ import annotations

import os
from dataclasses import dataclass

from app.runtime import kernel as k

# option -> (clear, flag): clear=True removes the flag (e.g. "rw" clears MS_RDONLY)
_FLAGS: dict[str, tuple[bool, int]] = {
    "ro": (False, k.MS_RDONLY), "rw": (True, k.MS_RDONLY),
    "nosuid": (False, k.MS_NOSUID), "suid": (True, k.MS_NOSUID),
    "nodev": (False, k.MS_NODEV), "dev": (True, k.MS_NODEV),
    "noexec": (False, k.MS_NOEXEC), "exec": (True, k.MS_NOEXEC),
    "sync": (False, k.MS_SYNCHRONOUS), "async": (True, k.MS_SYNCHRONOUS),
    "dirsync": (False, k.MS_DIRSYNC), "remount": (False, k.MS_REMOUNT),
    "mand": (False, k.MS_MANDLOCK), "nomand": (True, k.MS_MANDLOCK),
    "atime": (True, k.MS_NOATIME), "noatime": (False, k.MS_NOATIME),
    "diratime": (True, k.MS_NODIRATIME), "nodiratime": (False, k.MS_NODIRATIME),
    "relatime": (False, k.MS_RELATIME), "norelatime": (True, k.MS_RELATIME),
    "strictatime": (False, k.MS_STRICTATIME), "nostrictatime": (True, k.MS_STRICTATIME),
    "nosymfollow": (False, k.MS_NOSYMFOLLOW), "symfollow": (True, k.MS_NOSYMFOLLOW),
    "bind": (False, k.MS_BIND), "rbind": (False, k.MS_BIND | k.MS_REC),
}  # fmt: skip
PROPAGATION: dict[str, int] = {
    "private": k.MS_PRIVATE, "rprivate": k.MS_PRIVATE | k.MS_REC,
    "shared": k.MS_SHARED, "rshared": k.MS_SHARED | k.MS_REC,
    "slave": k.MS_SLAVE, "rslave": k.MS_SLAVE | k.MS_REC,
    "unbindable": k.MS_UNBINDABLE, "runbindable": k.MS_UNBINDABLE | k.MS_REC,
}  # fmt: skip
# statvfs f_flag bits that are locked on a bind mount made inside a user namespace
_LOCKED = (
    (os.ST_RDONLY, k.MS_RDONLY), (os.ST_NOSUID, k.MS_NOSUID), (os.ST_NODEV, k.MS_NODEV),
    (os.ST_NOEXEC, k.MS_NOEXEC), (os.ST_NOATIME, k.MS_NOATIME), (os.ST_NODIRATIME, k.MS_NODIRATIME),
    (os.ST_RELATIME, k.MS_RELATIME),
)  # fmt: skip


@dataclass(frozen=True)
class MountOptions:
    flags: int
    propagation: list[int]
    data: str

    @property
    def is_bind(self) -> bool:
        return bool(self.flags & k.MS_BIND)

    @property
    def remount_flags(self) -> int:
        """Flags a bind mount needs re-applied with MS_REMOUNT (bind ignores them at first)."""
        return self.flags & ~(k.MS_BIND | k.MS_REC | k.MS_REMOUNT)


def parse(options: list[str], mount_type: str | None = None) -> MountOptions:
    flags = 0
    propagation: list[int] = []
    data: list[str] = []
    for option in options:
        if option in _FLAGS:
            clear, flag = _FLAGS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option in PROPAGATION:
            propagation.append(PROPAGATION[option])
        elif option in ("defaults", "rro", "rrw"):
            if option == "rro":
                flags |= k.MS_RDONLY
        else:
            data.append(option)
    if mount_type == "bind":
        flags |= k.MS_BIND
    return MountOptions(flags=flags, propagation=propagation, data=",".join(data))


def locked_flags(path: str) -> int:
    """The mount flags of the mount holding ``path`` that a userns bind remount must keep."""
    try:
        current = os.statvfs(path).f_flag
    except OSError:
        return 0
    return sum(flag for bit, flag in _LOCKED if current & bit)
