"""THE strict Jinja2 renderer of the node, and writing rendered files into a container rootfs.

Two users, one core (:class:`TemplateEngine`):

* apps' ``config_templates`` (vappc ``StartApp``): :func:`render`, :func:`render_all`,
  :func:`render_into_rootfs` below, variables = the spec's ``template_vars``;
* bootstrap profiles (``app/bootstrap/render.py``): an engine per profile whose known
  names are the profile's declared variables, over typed values (ints, bools, lists).

The core is a sandboxed environment (templates come from agents and operators and
must not reach Python internals) with ``StrictUndefined``, no autoescaping (these are
config files), a bounded compile cache keyed by template source (a no-op reconcile pass
re-renders every field of every component and must not recompile), and one error
shape: :class:`InvalidArgument` (category Config, the engine's phase) whose message
names the template and the variable. Names are checked statically before rendering,
so a branch not taken today cannot hide a typo that breaks tomorrow.

Writing is a second step, so a bad template never leaves a half-written rootfs::

    render_all(templates, vars)  ── every template rendered in memory first
         │   (undefined variable / syntax error → InvalidArgument naming template + variable)
         ▼
    write_into_rootfs(rootfs, destination, text)   ── one file at a time, atomically
             (temp file in the target dir + fsync + rename; the destination is resolved
              with chroot semantics: symlinks inside the rootfs are followed as the
              container would see them, and nothing can point outside the rootfs)
"""

from __future__ import annotations

import base64
import collections
import contextlib
import functools
import json
import os
import re
import stat
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import jinja2
import yaml
from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment

from app.errors import Category, InvalidArgument

_MAX_SYMLINKS = 40
PHASE = "render_templates"


@dataclass(frozen=True)
class Rendered:
    destination: str
    text: str


@dataclass(frozen=True)
class Compiled:
    template: jinja2.Template
    names: frozenset[str]  # every variable the template reads from its context


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


class TemplateEngine:
    """Sandboxed strict Jinja2 with a compile cache; every failure an ``InvalidArgument``.

    ``loader`` lets templates ``include`` others (profiles); ``trim_blocks`` and
    ``lstrip_blocks`` are the usual Jinja2 whitespace options (off for apps' templates,
    whose output must be exactly what the agent wrote around the tags).
    """

    def __init__(self, *, phase: str = PHASE, loader: jinja2.BaseLoader | None = None,
                 trim_blocks: bool = False, lstrip_blocks: bool = False, cache_size: int = 1024) -> None:
        self.phase = phase
        self.env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True,
                                        loader=loader, trim_blocks=trim_blocks, lstrip_blocks=lstrip_blocks)
        self.env.filters.update(to_yaml=_to_yaml, to_json=json.dumps, b64encode=_b64)
        self._globals = frozenset(self.env.globals)
        self._cache: collections.OrderedDict[str, Compiled] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # bootstrap renders in a worker thread, apps on the loop

    def error(self, label: str, message: str, **details: Any) -> InvalidArgument:
        return InvalidArgument(f"{label}: {message}", category=Category.CONFIG, phase=self.phase,
                               details={"template": label, **details})

    def compile(self, source: str, label: str) -> Compiled:
        """Parse once per distinct source (LRU); a syntax error names the template and line."""
        with self._lock:
            hit = self._cache.get(source)
            if hit is not None:
                self._cache.move_to_end(source)
                return hit
        try:
            ast = self.env.parse(source)
        except TemplateSyntaxError as exc:
            raise self.error(label, f"template syntax error on line {exc.lineno}: {exc.message}") from None
        compiled = Compiled(self.env.from_string(ast), frozenset(meta.find_undeclared_variables(ast)))
        with self._lock:
            self._cache[source] = compiled
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return compiled

    def check_names(self, compiled: Compiled, known: Collection[str], label: str, hint: str = "") -> None:
        missing = sorted(compiled.names - self._globals - set(known))
        if missing:
            more = f" (and {', '.join(map(repr, missing[1:]))})" if missing[1:] else ""
            raise self.error(label, f"undefined variable {missing[0]!r}{more}{hint}", variables=missing)

    def run(self, compiled: Compiled, variables: Mapping[str, Any], label: str) -> str:
        try:
            return compiled.template.render(variables)
        except UndefinedError as exc:  # e.g. an attribute of a defined variable
            raise self.error(label, str(exc.message)) from None
        except TemplateError as exc:  # includes the sandbox's SecurityError
            raise self.error(label, str(exc)) from None
        except (TypeError, ValueError, ArithmeticError) as exc:
            raise self.error(label, f"{type(exc).__name__}: {exc}") from None

    def render(self, source: str, variables: Mapping[str, Any], label: str = "template", *,
               known: Collection[str] | None = None, hint: str = "") -> str:
        """Render ``source``; every name it uses must be in ``known`` (default: ``variables``)."""
        if "{" not in source:  # no tag, comment or expression: most fields are plain text
            return source
        compiled = self.compile(source, label)
        self.check_names(compiled, variables.keys() if known is None else known, label, hint)
        return self.run(compiled, variables, label)


@functools.cache
def _apps_engine() -> TemplateEngine:
    return TemplateEngine(phase=PHASE)


def _label(index: int, destination: str) -> str:
    return f"config_templates[{index}] ({destination})"


def render(source: str, variables: Mapping[str, Any], label: str = "template") -> str:
    """Render one app template; any undefined variable is a Config error naming it."""
    return _apps_engine().render(source, variables, label)


def render_all(templates: Sequence[tuple[str, str]], variables: Mapping[str, Any]) -> list[Rendered]:
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
    # /proc/<pid>/root (a container whose rootfs is mounted only in its own namespace) must stay
    # as is: realpath would turn that magic link into the daemon's own "/".
    root = Path(rootfs) if re.fullmatch(r"/proc/[0-9]+/root", str(rootfs)) else Path(os.path.realpath(rootfs))
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
    rootfs: Path, templates: Sequence[tuple[str, str]], variables: Mapping[str, Any]
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
