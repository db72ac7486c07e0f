"""Strict Jinja2 rendering of config templates into a container rootfs.

Two steps, so a bad template never leaves a half-written rootfs::

    render_all(templates, vars)  ── every template rendered in memory first
         │   (undefined variable / syntax error → InvalidArgument naming template + variable)
         ▼
    write_into_rootfs(rootfs, destination, text)   ── one file at a time, atomically
             (temp file in the target dir + fsync + rename; the destination is resolved
              with chroot semantics: symlinks inside the rootfs are followed as the
              container would see them, and nothing can point outside the rootfs)

Rendering is sandboxed (``SandboxedEnvironment``): templates come from agents
and must not reach Python internals. No autoescaping: these are config files.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment

from app.errors import Category, InvalidArgument

_MAX_SYMLINKS = 40
PHASE = "render_templates"


@dataclass(frozen=True)
class Rendered:
    destination: str
    text: str


def _environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


def _label(index: int, destination: str) -> str:
    return f"config_templates[{index}] ({destination})"


def render(source: str, variables: Mapping[str, str], label: str = "template") -> str:
    """Render one template; any undefined variable is a Config error naming it."""
    env = _environment()
    try:
        ast = env.parse(source)
    except TemplateSyntaxError as exc:
        raise InvalidArgument(
            f"{label}: syntax error on line {exc.lineno}: {exc.message}", category=Category.CONFIG,
            phase=PHASE, details={"template": label},
        ) from None
    missing = sorted(meta.find_undeclared_variables(ast) - set(variables) - set(env.globals))
    if missing:
        raise InvalidArgument(
            f"{label}: undefined variable {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else ""),
            category=Category.CONFIG, phase=PHASE, details={"template": label, "variables": missing},
        )
    try:
        return env.from_string(ast).render(dict(variables))
    except UndefinedError as exc:  # e.g. an attribute of a defined variable
        raise InvalidArgument(f"{label}: {exc.message}", phase=PHASE, details={"template": label}) from None
    except TemplateError as exc:
        raise InvalidArgument(f"{label}: {exc}", phase=PHASE, details={"template": label}) from None


def render_all(templates: Sequence[tuple[str, str]], variables: Mapping[str, str]) -> list[Rendered]:
    """Render ``(template, destination)`` pairs; fail before anything is written."""
    out = []
    for index, (source, destination) in enumerate(templates):
        check_destination(destination)
        out.append(Rendered(destination, render(source, variables, _label(index, destination))))
    return out


def check_destination(destination: str) -> PurePosixPath:
    path = PurePosixPath(destination)
    if not path.is_absolute() or "\x00" in destination:
        raise InvalidArgument(f"destination {destination!r} must be an absolute path", phase=PHASE)
    if ".." in path.parts:
        raise InvalidArgument(f"destination {destination!r} must not contain '..'", phase=PHASE)
    if path == PurePosixPath("/"):
        raise InvalidArgument("destination '/' is a directory", phase=PHASE)
    return path


def resolve_in_rootfs(rootfs: Path, destination: str) -> Path:
    """Host path of ``destination`` as the container sees it; never outside ``rootfs``.

    Symlinks in the rootfs are followed with the rootfs as ``/`` (an absolute
    link target restarts at the rootfs, ``..`` stops at it). The last component
    may be missing; a last component that is a symlink is followed too.
    """
    root = Path(os.path.realpath(rootfs))
    pending = list(PurePosixPath(destination).parts[1:])
    current: list[str] = []
    followed = 0
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if current:
                current.pop()
            continue
        candidate = root.joinpath(*current, part)
        try:
            st = candidate.lstat()
        except FileNotFoundError:
            current.append(part)
            continue
        if stat.S_ISLNK(st.st_mode):
            followed += 1
            if followed > _MAX_SYMLINKS:
                raise InvalidArgument(f"destination {destination!r}: too many symlinks", phase=PHASE)
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                current = []
                pending = list(target.parts[1:]) + pending
            else:
                pending = list(target.parts) + pending
            continue
        current.append(part)
    return root.joinpath(*current)


def write_into_rootfs(rootfs: Path, destination: str, text: str, mode: int = 0o644) -> Path:
    """Write ``text`` at ``destination`` inside ``rootfs`` atomically; return the host path."""
    check_destination(destination)
    target = resolve_in_rootfs(rootfs, destination)
    if target.is_dir():
        raise InvalidArgument(f"destination {destination!r} is a directory in the image", phase=PHASE)
    parent_owner = _nearest_existing(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.vapp-tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # Keep the file owned like its directory (a rootless rootfs is owned by a mapped uid).
        with contextlib.suppress(PermissionError):
            os.chown(tmp, parent_owner.st_uid, parent_owner.st_gid)
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return target


def _nearest_existing(path: Path) -> os.stat_result:
    while not path.exists():
        path = path.parent
    return path.stat()


def render_into_rootfs(
    rootfs: Path, templates: Sequence[tuple[str, str]], variables: Mapping[str, str]
) -> list[Path]:
    """Render every template, then write them all; an error writes nothing."""
    rendered = render_all(templates, variables)
    written = []
    for item in rendered:
        try:
            written.append(write_into_rootfs(rootfs, item.destination, item.text))
        except OSError as exc:
            raise InvalidArgument(
                f"cannot write {item.destination} into the rootfs: {exc.strerror}",
                category=Category.IO, phase=PHASE,
            ) from exc
    return written
