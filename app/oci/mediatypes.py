"""OCI and Docker media types, and the small predicates everyone needs over them.

Four manifest shapes are supported; Docker schema 1 is recognised only to refuse it::

    index (multi-platform)         single-platform manifest
    ---------------------------    ----------------------------
    OCI_INDEX                      OCI_MANIFEST
    DOCKER_MANIFEST_LIST           DOCKER_MANIFEST_V2
                                   DOCKER_MANIFEST_V1(_SIGNED)  -> refused
"""

from __future__ import annotations

import json

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDIST = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDIST_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDIST_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_V1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_V1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST_V2})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES
SCHEMA1_TYPES = frozenset({DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED, "application/json"})

# What a pull-through client asks for by default when it does not say (docker's order).
DEFAULT_ACCEPT = (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_V2)

LAYER_GZIP_TYPES = frozenset(
    {OCI_LAYER_GZIP, OCI_LAYER_NONDIST_GZIP, DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN}
)
LAYER_ZSTD_TYPES = frozenset({OCI_LAYER_ZSTD, OCI_LAYER_NONDIST_ZSTD})
LAYER_PLAIN_TYPES = frozenset({OCI_LAYER, OCI_LAYER_NONDIST})
LAYER_TYPES = LAYER_GZIP_TYPES | LAYER_ZSTD_TYPES | LAYER_PLAIN_TYPES

# In-toto attestations (buildkit) hang off an index as "unknown/unknown" manifests.
ATTESTATION_REF_ANNOTATION = "vnd.docker.reference.type"
ATTESTATION_REF_VALUE = "attestation-manifest"


def base(media_type: str | None) -> str:
    """Strip parameters and whitespace: ``a/b; charset=utf-8`` -> ``a/b``."""
    return (media_type or "").split(";", 1)[0].strip().lower()


def is_index(media_type: str | None) -> bool:
    return base(media_type) in INDEX_TYPES


def is_image_manifest(media_type: str | None) -> bool:
    return base(media_type) in IMAGE_MANIFEST_TYPES


def is_manifest(media_type: str | None) -> bool:
    return base(media_type) in MANIFEST_TYPES


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"``, ``None`` (plain tar); raise ``ValueError`` for non-layers."""
    mt = base(media_type)
    if mt in LAYER_GZIP_TYPES:
        return "gzip"
    if mt in LAYER_ZSTD_TYPES:
        return "zstd"
    if mt in LAYER_PLAIN_TYPES:
        return None
    raise ValueError(f"not a layer media type: {media_type!r}")


def detect_schema1(body: bytes, content_type: str | None = None) -> bool:
    """True for Docker schema 1 manifests (by media type, or ``schemaVersion: 1`` in the body)."""
    ct = base(content_type)
    if ct in (DOCKER_MANIFEST_V1, DOCKER_MANIFEST_V1_SIGNED):
        return True
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(doc, dict) and doc.get("schemaVersion") == 1


def sniff_manifest_type(body: bytes) -> str | None:
    """The media type a manifest body declares, or infers from its shape (OCI allows omitting it)."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if doc.get("schemaVersion") == 1:
        return DOCKER_MANIFEST_V1
    if "manifests" in doc:
        return OCI_INDEX
    if "config" in doc and "layers" in doc:
        return OCI_MANIFEST
    return None
