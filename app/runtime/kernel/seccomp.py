"""OCI ``linux.seccomp`` → a classic BPF program (pure), and installing it (the kernel seam).

Program layout (x86_64)::

    ld arch ─ jeq X86_64 ? continue : ret default
    ld nr   ─ jge 0x40000000 (x32 ABI) ? ret default
    per rule, in order:   jeq nr ? check args… ret action : next rule   (jumps stay < 256)
    ret default

A rule's ``args`` are ANDed; 64-bit comparisons check the high word, then the low word.
Names this kernel table does not know are skipped (as libseccomp-based runtimes do).
"""

from __future__ import annotations

import ctypes
import errno as errnos
import struct
from typing import Any

from app.runtime.kernel.syscalls_x86_64 import SYSCALLS

AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000
# BPF opcodes
LD_W_ABS = 0x20
JMP_JEQ_K = 0x15
JMP_JGE_K = 0x35
JMP_JGT_K = 0x25
JMP_JSET_K = 0x45
JMP_JA = 0x05
RET_K = 0x06
ALU_AND_K = 0x54
# struct seccomp_data offsets
OFF_NR, OFF_ARCH = 0, 4


def _args_off(index: int, high: bool) -> int:
    return 16 + 8 * index + (4 if high else 0)


class SeccompError(ValueError):
    pass


def action_value(action: str, errno_ret: int | None) -> int:
    err = errnos.EPERM if errno_ret is None else int(errno_ret)
    table = {
        "SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000, "SCMP_ACT_KILL_PROCESS": 0x80000000,
        "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ERRNO": 0x00050000 | (err & 0xFFFF),
        "SCMP_ACT_TRACE": 0x7FF00000 | (err & 0xFFFF), "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000,
    }  # fmt: skip
    if action not in table:
        raise SeccompError(f"seccomp action {action!r} is not supported")
    return table[action]


Insn = tuple[int, int, int, int]  # code, jt, jf, k


def _arg_checks(args: list[dict[str, Any]]) -> list[Insn]:
    """Instructions that fall through when every arg condition holds, else jump by +FAIL.

    FAIL jumps are encoded with jf/jt = 255 placeholders and patched by the caller."""
    out: list[Insn] = []
    for arg in args:
        index, op = int(arg["index"]), arg["op"]
        value, two = int(arg["value"]), int(arg.get("valueTwo") or 0)
        hi, lo = value >> 32, value & 0xFFFFFFFF
        if op == "SCMP_CMP_MASKED_EQ":
            mhi, mlo = value >> 32, value & 0xFFFFFFFF
            for off, mask, want in ((_args_off(index, True), mhi, two >> 32),
                                    (_args_off(index, False), mlo, two & 0xFFFFFFFF)):
                out += [(LD_W_ABS, 0, 0, off), (ALU_AND_K, 0, 0, mask), (JMP_JEQ_K, 0, 255, want)]
            continue
        if op in ("SCMP_CMP_EQ", "SCMP_CMP_NE"):
            eq = op == "SCMP_CMP_EQ"
            out += [(LD_W_ABS, 0, 0, _args_off(index, True))]
            if eq:
                out += [(JMP_JEQ_K, 0, 255, hi), (LD_W_ABS, 0, 0, _args_off(index, False)), (JMP_JEQ_K, 0, 255, lo)]
            else:  # NE: high differs → ok (skip 2), else low must differ
                out += [(JMP_JEQ_K, 0, 2, hi), (LD_W_ABS, 0, 0, _args_off(index, False)),
                        (JMP_JEQ_K, 255, 0, lo)]
            continue
        if op in ("SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_GT", "SCMP_CMP_GE"):
            # a > b on 64 bits: hi > hi' or (hi == hi' and lo > lo'); LT/LE as negations of GE/GT
            # LT = not GE, LE = not GT
            jmp = JMP_JGT_K if op in ("SCMP_CMP_GT", "SCMP_CMP_LE") else JMP_JGE_K
            want_true = op in ("SCMP_CMP_GT", "SCMP_CMP_GE")
            out += [(LD_W_ABS, 0, 0, _args_off(index, True)), (JMP_JGT_K, 0, 1, hi)]
            if want_true:
                out += [(JMP_JA, 0, 0, 3), (JMP_JEQ_K, 0, 255, hi), (LD_W_ABS, 0, 0, _args_off(index, False)),
                        (jmp, 0, 255, lo)]
            else:
                out += [(JMP_JA, 0, 0, 255), (JMP_JEQ_K, 0, 2, hi), (LD_W_ABS, 0, 0, _args_off(index, False)),
                        (jmp, 255, 0, lo)]
            continue
        raise SeccompError(f"seccomp argument operator {op!r} is not supported")
    return out


def compile_filter(profile: dict[str, Any]) -> list[Insn]:
    default = action_value(profile.get("defaultAction", "SCMP_ACT_ALLOW"), profile.get("defaultErrnoRet"))
    prog: list[Insn] = [
        (LD_W_ABS, 0, 0, OFF_ARCH), (JMP_JEQ_K, 1, 0, AUDIT_ARCH_X86_64), (RET_K, 0, 0, default),
        (LD_W_ABS, 0, 0, OFF_NR), (JMP_JGE_K, 0, 1, X32_SYSCALL_BIT), (RET_K, 0, 0, default),
    ]
    for rule in profile.get("syscalls") or []:
        action = action_value(rule["action"], rule.get("errnoRet"))
        checks = _arg_checks(list(rule.get("args") or []))
        for name in rule.get("names") or []:
            nr = SYSCALLS.get(name)
            if nr is None:
                continue
            # block: [jeq nr ? 0 : skip] + checks (+ reload nr at the end when args were loaded) + ret
            body = [*checks, (RET_K, 0, 0, action)]
            tail = [(LD_W_ABS, 0, 0, OFF_NR)] if checks else []
            size = len(body)
            patched: list[Insn] = []
            for pos, (code, jt, jf, k) in enumerate(body):
                to_fail = size - pos - 1  # lands on the reload (or the next block) after the ret
                patched.append((code, to_fail if jt == 255 else jt, to_fail if jf == 255 else jf,
                                to_fail if code == JMP_JA and k == 255 else k))
            if size + len(tail) > 255:
                raise SeccompError(f"seccomp rule for {name} is too large")
            prog.append((JMP_JEQ_K, 0, size + len(tail), nr))
            prog += patched + tail
    prog.append((RET_K, 0, 0, default))
    return prog


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)  # at import: after pivot_root no library can be loaded
_libc.syscall.restype = ctypes.c_long

FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": 1, "SECCOMP_FILTER_FLAG_LOG": 2, "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4}


def install(profile: dict[str, Any]) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER) with the compiled program (needs no_new_privs or CAP_SYS_ADMIN)."""
    prog = compile_filter(profile)
    raw = b"".join(struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF) for code, jt, jf, k in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    fprog = _SockFprog(len(prog), ctypes.cast(buf, ctypes.c_void_p))
    flags = 0
    for flag in profile.get("flags") or []:
        flags |= FLAGS.get(flag, 0)
    if _libc.syscall(317, 1, flags, ctypes.byref(fprog)) != 0:  # SYS_seccomp, SECCOMP_SET_MODE_FILTER
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {errnos.errorcode.get(err, err)}")
