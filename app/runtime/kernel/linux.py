"""The real kernel: libc through ctypes. Imported by the fork server, shims and vapp-oci init.

Only stdlib modules are imported so a forked shim stays small.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct

# glibc's soname directly: ctypes.util.find_library runs `ldconfig -p` (a process per
# interpreter start) and imports subprocess+threading into every forked shim and init.
_libc = ctypes.CDLL("libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long

_SYS_PIVOT_ROOT = 155  # x86_64
_SYS_CAPSET = 126
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _check(result: int, what: str, path: str | None = None) -> None:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)


def _b(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


class LinuxKernel:
    """:class:`app.runtime.kernel.Kernel` over libc."""

    def unshare(self, flags: int) -> None:
        _check(_libc.unshare(flags), "unshare")

    def setns(self, fd: int, nstype: int) -> None:
        _check(_libc.setns(fd, nstype), "setns")

    def mount(self, source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
        _check(_libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)

    def umount2(self, target: str, flags: int) -> None:
        _check(_libc.umount2(_b(target), flags), "umount2", target)

    def pivot_root(self, new_root: str, put_old: str) -> None:
        _check(_libc.syscall(_SYS_PIVOT_ROOT, _b(new_root), _b(put_old)), "pivot_root", new_root)

    def sethostname(self, name: str) -> None:
        raw = name.encode()
        _check(_libc.sethostname(raw, len(raw)), "sethostname")

    def setdomainname(self, name: str) -> None:
        raw = name.encode()
        _check(_libc.setdomainname(raw, len(raw)), "setdomainname")

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> int:
        result = int(_libc.prctl(option, arg2, arg3, 0, 0))
        _check(result, f"prctl({option})")
        return result

    def capset(self, effective: int, permitted: int, inheritable: int) -> None:
        header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
        data = (_CapData * 2)()
        for i in range(2):
            shift = 32 * i
            data[i].effective = (effective >> shift) & 0xFFFFFFFF
            data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
            data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
        _check(_libc.syscall(_SYS_CAPSET, ctypes.byref(header), ctypes.byref(data)), "capset")

    def write_file(self, path: str, data: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, data.encode())
        finally:
            os.close(fd)

    def mknod(self, path: str, mode: int, device: int) -> None:
        os.mknod(path, mode, device)

    def loopback_up(self) -> None:
        """Bring ``lo`` up in a fresh network namespace (SIOCGIFFLAGS/SIOCSIFFLAGS)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            request = struct.pack("16sH14x", b"lo", 0)
            flags = struct.unpack("16sH14x", fcntl.ioctl(sock, 0x8913, request))[1]
            fcntl.ioctl(sock, 0x8914, struct.pack("16sH14x", b"lo", flags | 0x1))  # IFF_UP
