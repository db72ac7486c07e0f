"""Where profiles come from: built-in ones and configured directories.

A profile is a directory ``<dir>/<name>/`` holding ``profile.yaml`` (or
``profile.toml``) and an optional ``templates/`` directory; the built-in
profiles (``etcd``, ``kubernetes``) live in ``app/bootstrap/profiles/``.
Configured directories come first, so an operator can shadow a built-in.
Parsed profiles are cached until the file's mtime changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from app.bootstrap.schema import Profile, load_profile_file
from app.errors import InvalidArgument, NotFound

BUILTIN_DIR = Path(__file__).parent / "profiles"  # data only: profile dirs, no Python


class ProfileStore:
    def __init__(self, dirs: Sequence[Path] = ()) -> None:
        self.dirs = [*dirs, BUILTIN_DIR]
        self._cache: dict[Path, tuple[float, Profile]] = {}

    def _find(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise InvalidArgument(f"bad profile name {name!r}", phase="profile")
        for d in self.dirs:
            for fname in ("profile.yaml", "profile.yml", "profile.toml"):
                p = d / name / fname
                if p.is_file():
                    return p
        raise NotFound(f"no profile {name!r} (looked in {', '.join(map(str, self.dirs))})", phase="profile")

    def get(self, name: str) -> tuple[Profile, Path | None]:
        """The parsed profile and its templates directory (None when it has none)."""
        path = self._find(name)
        mtime = path.stat().st_mtime
        hit = self._cache.get(path)
        if hit is None or hit[0] != mtime:
            prof = load_profile_file(path)
            if prof.name != name:
                raise InvalidArgument(f"{path}: name is {prof.name!r} but the directory says {name!r}",
                                      phase="profile")
            hit = (mtime, prof)
            self._cache[path] = hit
        tdir = path.parent / "templates"
        return hit[1], (tdir if tdir.is_dir() else None)

    def names(self) -> list[str]:
        out = set()
        for d in self.dirs:
            if d.is_dir():
                out |= {p.parent.name for p in d.glob("*/profile.*")}
        return sorted(out)
