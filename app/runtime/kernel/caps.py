"""Capability names and the drop sequence (bounding → keepcaps uid switch → capset → ambient)."""

from __future__ import annotations

from collections.abc import Iterable

from app.runtime.kernel import (
    PR_CAP_AMBIENT,
    PR_CAP_AMBIENT_CLEAR_ALL,
    PR_CAP_AMBIENT_RAISE,
    PR_CAPBSET_DROP,
    Kernel,
    cap_last_cap,
)

CAP_NAMES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
)  # fmt: skip
CAP_NUMBERS = {name: i for i, name in enumerate(CAP_NAMES)}

# Docker's/containerd's default set for unprivileged containers.
DEFAULT_CAPS: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)  # fmt: skip


class UnknownCapability(ValueError):
    pass


def cap_mask(names: Iterable[str]) -> int:
    """Bit mask for capability names; unknown names raise :class:`UnknownCapability`.

    Capabilities newer than the running kernel are ignored (runc does the same)."""
    mask = 0
    last = cap_last_cap()
    for name in names:
        number = CAP_NUMBERS.get(name.upper())
        if number is None:
            raise UnknownCapability(name)
        if number <= last:
            mask |= 1 << number
    return mask


def apply_bounding(kernel: Kernel, bounding: int) -> None:
    """Drop every capability outside ``bounding`` from the bounding set."""
    for number in range(cap_last_cap() + 1):
        if not bounding & (1 << number):
            kernel.prctl(PR_CAPBSET_DROP, number)


def apply_sets(kernel: Kernel, effective: int, permitted: int, inheritable: int, ambient: int) -> None:
    """Set the process's sets; ambient ones need to be permitted and inheritable first."""
    kernel.capset(effective, permitted, inheritable)
    kernel.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    # Ambient capabilities must be permitted and inheritable; others are skipped (as runc does).
    raisable = ambient & permitted & inheritable
    for number in range(cap_last_cap() + 1):
        if raisable & (1 << number):
            kernel.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, number)
