"""Manifests, indexes and descriptors as small frozen dataclasses (pure parsing, no I/O).

::

    Index (OCI index / Docker manifest list)
      manifests: [Descriptor(platform=linux/amd64) -> ImageManifest, ...]
    ImageManifest (OCI manifest / Docker v2)
      config: Descriptor -> image config JSON
      layers: [Descriptor -> tar(+gzip|+zstd) blobs], base layer first

:func:`parse_manifest` refuses schema 1 and anything malformed with
:class:`InvalidArgument` (category Image); :func:`select_platform` picks the
manifest for a node from an index and never falls back to another architecture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform as pyplatform
from typing import Any

from app.errors import Category, InvalidArgument, NotFound
from app.oci import mediatypes as mt
from app.oci.reference import validate_digest

_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "armhf": "arm",
    "arm": "arm",
    "i386": "386",
    "i686": "386",
    "386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}
_DEFAULT_VARIANT = {"arm64": "v8", "arm": "v7"}


def _bad(msg: str, **details: Any) -> InvalidArgument:
    return InvalidArgument(msg, category=Category.IMAGE, details=details)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None
    os_version: str | None = None
    os_features: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``os/arch[/variant]`` (``linux/arm64/v8``)."""
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise _bad(f"invalid platform {text!r}: expected os/arch[/variant]", platform=text)
        return cls(
            os=parts[0].lower(),
            architecture=normalize_arch(parts[1]),
            variant=parts[2].lower() if len(parts) == 3 else None,
        )

    @classmethod
    def host(cls) -> Platform:
        machine = pyplatform.machine()
        variant = {"armv7l": "v7", "armv6l": "v6"}.get(machine)
        arch = normalize_arch(machine)
        return cls(os="linux", architecture=arch, variant=variant)

    def __str__(self) -> str:
        return f"{self.os}/{self.architecture}" + (f"/{self.variant}" if self.variant else "")


def normalize_arch(arch: str) -> str:
    return _ARCH_ALIASES.get(arch.lower(), arch.lower())


@dataclasses.dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    @property
    def is_attestation(self) -> bool:
        if self.annotations.get(mt.ATTESTATION_REF_ANNOTATION) == mt.ATTESTATION_REF_VALUE:
            return True
        p = self.platform
        return p is not None and p.os == "unknown" and p.architecture == "unknown"


@dataclasses.dataclass(frozen=True, slots=True)
class ImageManifest:
    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True)
class Index:
    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: dict[str, str] = dataclasses.field(default_factory=dict)


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise _bad(f"{what}: annotations must be a map of strings")
    return dict(value)


def _platform(value: Any, what: str) -> Platform | None:
    if value is None:
        return None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("os"), str)
        or not isinstance(value.get("architecture"), str)
    ):
        raise _bad(f"{what}: platform needs string os and architecture")
    features = value.get("os.features") or ()
    return Platform(
        os=value["os"],
        architecture=value["architecture"],
        variant=value.get("variant") or None,
        os_version=value.get("os.version"),
        os_features=tuple(features),
    )


def parse_descriptor(value: Any, what: str = "descriptor") -> Descriptor:
    if not isinstance(value, dict):
        raise _bad(f"{what}: not an object")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise _bad(f"{what}: missing mediaType")
    if not isinstance(digest, str):
        raise _bad(f"{what}: missing digest")
    validate_digest(digest)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"{what}: size must be a non-negative integer", digest=digest)
    urls = value.get("urls") or ()
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        platform=_platform(value.get("platform"), what),
        annotations=_str_map(value.get("annotations"), what),
        urls=tuple(urls),
        artifact_type=value.get("artifactType"),
    )


def parse_manifest(body: bytes, media_type: str | None = None) -> ImageManifest | Index:
    """Parse a manifest or index body; ``media_type`` is the Content-Type it came with."""
    if mt.detect_schema1(body, media_type):
        raise _bad(
            "Docker schema 1 manifests are not supported (push the image again with a current client)",
            mediaType=mt.base(media_type) or mt.DOCKER_MANIFEST_V1,
        )
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _bad("manifest is not a JSON object")
    if doc.get("schemaVersion") != 2:
        raise _bad(f"unsupported manifest schemaVersion {doc.get('schemaVersion')!r}")
    kind = mt.base(doc.get("mediaType")) or mt.base(media_type) or (mt.sniff_manifest_type(body) or "")
    if kind not in mt.MANIFEST_TYPES and mt.base(media_type) in mt.MANIFEST_TYPES:
        kind = mt.base(media_type)
    annotations = _str_map(doc.get("annotations"), "manifest")
    if kind in mt.INDEX_TYPES or (kind not in mt.IMAGE_MANIFEST_TYPES and "manifests" in doc):
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise _bad("index: manifests must be a list")
        descs = tuple(parse_descriptor(d, f"index.manifests[{i}]") for i, d in enumerate(entries))
        return Index(media_type=kind or mt.OCI_INDEX, manifests=descs, annotations=annotations)
    if kind in mt.IMAGE_MANIFEST_TYPES or "config" in doc:
        layers = doc.get("layers")
        if not isinstance(layers, list):
            raise _bad("manifest: layers must be a list")
        return ImageManifest(
            media_type=kind or mt.OCI_MANIFEST,
            config=parse_descriptor(doc.get("config"), "manifest.config"),
            layers=tuple(parse_descriptor(d, f"manifest.layers[{i}]") for i, d in enumerate(layers)),
            annotations=annotations,
        )
    raise _bad(f"unsupported manifest media type {kind or media_type!r}")


def _variant_of(p: Platform) -> str | None:
    return (p.variant or _DEFAULT_VARIANT.get(normalize_arch(p.architecture)) or "").lower() or None


def platform_matches(candidate: Platform, want: Platform) -> bool:
    """Same OS, same architecture; the variant must match when both sides name one."""
    if candidate.os.lower() != want.os.lower():
        return False
    if normalize_arch(candidate.architecture) != normalize_arch(want.architecture):
        return False
    if want.variant is None or candidate.variant is None:
        return True
    return _variant_of(candidate) == _variant_of(want)


def select_platform(index: Index, os: str, arch: str, variant: str | None = None) -> Descriptor:
    """The manifest in ``index`` for ``os/arch[/variant]``; attestations are skipped.

    Preference: exact variant, then an entry without a variant. Another
    architecture is never chosen (running it would fail later with ENOEXEC);
    no match raises :class:`NotFound` listing what the index offers.
    """
    want = Platform(os=os, architecture=normalize_arch(arch), variant=variant)
    best: tuple[int, int, Descriptor] | None = None
    offered: list[str] = []
    for pos, desc in enumerate(index.manifests):
        if desc.is_attestation or desc.platform is None:
            continue
        offered.append(str(desc.platform))
        if not platform_matches(desc.platform, want):
            continue
        exact = want.variant is None or (
            desc.platform.variant is not None and _variant_of(desc.platform) == _variant_of(want)
        )
        rank = (0 if exact else 1, pos)
        if best is None or rank < best[:2]:
            best = (rank[0], rank[1], desc)
    if best is None:
        raise NotFound(
            f"no manifest for platform {want} in index (offers: {', '.join(offered) or 'none'})",
            category=Category.IMAGE,
            details={"platform": str(want), "offered": offered},
        )
    return best[2]
