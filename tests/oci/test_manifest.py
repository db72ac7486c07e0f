"""Manifest/index parsing, schema 1 refusal, media types and platform selection."""

from __future__ import annotations

import json

import pytest

from app.errors import InvalidArgument, NotFound
from app.oci import mediatypes as mt
from app.oci.manifest import ImageManifest, Index, Platform, parse_manifest, select_platform, sha256_digest


def _d(n: int) -> str:
    return "sha256:" + f"{n:064x}"


def _desc(n: int, media: str = mt.OCI_MANIFEST, **extra: object) -> dict[str, object]:
    return {"mediaType": media, "digest": _d(n), "size": 100 + n, **extra}


def _index(*entries: dict[str, object], media: str | None = mt.OCI_INDEX) -> bytes:
    doc: dict[str, object] = {"schemaVersion": 2, "manifests": list(entries)}
    if media:
        doc["mediaType"] = media
    return json.dumps(doc).encode()


def test_parse_image_manifest_both_flavours() -> None:
    for media, layer in ((mt.OCI_MANIFEST, mt.OCI_LAYER_GZIP), (mt.DOCKER_MANIFEST_V2, mt.DOCKER_LAYER_GZIP)):
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media,
                "config": _desc(1, mt.OCI_CONFIG),
                "layers": [_desc(2, layer), _desc(3, layer, annotations={"a": "b"})],
            }
        ).encode()
        m = parse_manifest(body, media)
        assert isinstance(m, ImageManifest)
        assert m.media_type == media
        assert [d.digest for d in m.layers] == [_d(2), _d(3)]
        assert m.layers[1].annotations == {"a": "b"}
        assert m.config.size == 101


def test_parse_index_without_media_type_field_uses_content_type_or_shape() -> None:
    body = _index(_desc(1, platform={"os": "linux", "architecture": "amd64"}), media=None)
    idx = parse_manifest(body, mt.DOCKER_MANIFEST_LIST)
    assert isinstance(idx, Index) and idx.media_type == mt.DOCKER_MANIFEST_LIST
    idx2 = parse_manifest(body)
    assert isinstance(idx2, Index) and idx2.media_type == mt.OCI_INDEX
    assert idx2.manifests[0].platform == Platform("linux", "amd64")


@pytest.mark.parametrize(
    ("body", "ctype"),
    [
        (b'{"schemaVersion": 1, "name": "x", "fsLayers": []}', None),
        (b"{}", mt.DOCKER_MANIFEST_V1_SIGNED),
        (b"not json", mt.OCI_MANIFEST),
        (b"[]", mt.OCI_MANIFEST),
        (b'{"schemaVersion": 3}', mt.OCI_MANIFEST),
        (
            json.dumps(
                {
                    "schemaVersion": 2,
                    "config": {"mediaType": "x", "digest": "sha256:12", "size": 1},
                    "layers": [],
                }
            ).encode(),
            mt.OCI_MANIFEST,
        ),
        (
            json.dumps(
                {"schemaVersion": 2, "config": _desc(1), "layers": [dict(_desc(2), size=-1)]}
            ).encode(),
            None,
        ),
        (json.dumps({"schemaVersion": 2, "config": _desc(1), "layers": "x"}).encode(), None),
        (json.dumps({"schemaVersion": 2, "manifests": {}}).encode(), mt.OCI_INDEX),
        (json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(), None),
    ],
)
def test_parse_rejects(body: bytes, ctype: str | None) -> None:
    with pytest.raises(InvalidArgument):
        parse_manifest(body, ctype)


def test_schema1_message_is_clear() -> None:
    with pytest.raises(InvalidArgument, match="schema 1"):
        parse_manifest(b'{"schemaVersion": 1}', None)


def test_select_platform_skips_attestations_and_never_falls_back() -> None:
    idx = parse_manifest(
        _index(
            _desc(1, platform={"os": "unknown", "architecture": "unknown"}),
            _desc(2, platform={"os": "linux", "architecture": "amd64"}),
            _desc(3, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
            _desc(4, platform={"os": "linux", "architecture": "arm", "variant": "v6"}),
            _desc(
                5,
                platform={"os": "linux", "architecture": "s390x"},
                annotations={mt.ATTESTATION_REF_ANNOTATION: mt.ATTESTATION_REF_VALUE},
            ),
        )
    )
    assert isinstance(idx, Index)
    assert select_platform(idx, "linux", "amd64").digest == _d(2)
    assert select_platform(idx, "linux", "x86_64").digest == _d(2)
    assert select_platform(idx, "linux", "arm64").digest == _d(3)
    assert select_platform(idx, "linux", "aarch64", "v8").digest == _d(3)
    with pytest.raises(NotFound, match="offers"):
        select_platform(idx, "linux", "arm", "v7")
    with pytest.raises(NotFound):
        select_platform(idx, "linux", "s390x")
    with pytest.raises(NotFound):
        select_platform(idx, "windows", "amd64")


def test_select_platform_prefers_exact_variant() -> None:
    idx = parse_manifest(
        _index(
            _desc(1, platform={"os": "linux", "architecture": "arm64"}),
            _desc(2, platform={"os": "linux", "architecture": "arm64", "variant": "v8"}),
        )
    )
    assert isinstance(idx, Index)
    assert select_platform(idx, "linux", "arm64", "v8").digest == _d(2)
    assert select_platform(idx, "linux", "arm64").digest == _d(1)


def test_mediatype_helpers() -> None:
    assert mt.is_index(mt.OCI_INDEX + "; charset=utf-8")
    assert mt.is_image_manifest(mt.DOCKER_MANIFEST_V2)
    assert not mt.is_manifest(mt.DOCKER_MANIFEST_V1)
    assert mt.layer_compression(mt.DOCKER_LAYER_GZIP) == "gzip"
    assert mt.layer_compression(mt.OCI_LAYER_ZSTD) == "zstd"
    assert mt.layer_compression(mt.OCI_LAYER) is None
    with pytest.raises(ValueError):
        mt.layer_compression(mt.OCI_CONFIG)
    assert mt.sniff_manifest_type(b'{"schemaVersion":2,"config":{},"layers":[]}') == mt.OCI_MANIFEST
    assert sha256_digest(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert str(Platform.parse("linux/arm64/v8")) == "linux/arm64/v8"
    with pytest.raises(InvalidArgument):
        Platform.parse("linux")


def test_host_platform_is_linux() -> None:
    assert Platform.host().os == "linux"
    assert Platform.host().architecture in ("amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64")
