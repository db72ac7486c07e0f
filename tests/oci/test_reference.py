"""The canonical reference parser: normalisation, forms and every rejection path."""

from __future__ import annotations

import pytest

from app.errors import Category, InvalidArgument
from app.oci.reference import Reference, split_name, validate_digest, validate_repository

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("library/busybox", "docker.io", "library/busybox", "latest", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("registry-1.docker.io/library/busybox:x", "docker.io", "library/busybox", "x", None),
        ("INDEX.DOCKER.IO/foo/bar", "docker.io", "foo/bar", "latest", None),
        ("foo/bar", "docker.io", "foo/bar", "latest", None),
        ("foo/bar/baz:v1", "docker.io", "foo/bar/baz", "v1", None),
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost:5000/x", "localhost:5000", "x", "latest", None),
        ("localhost:5000/x:tag", "localhost:5000", "x", "tag", None),
        ("127.0.0.1:5000/a/b:tag@" + D, "127.0.0.1:5000", "a/b", "tag", D),
        ("host.example:443/a/b@" + D, "host.example:443", "a/b", None, D),
        ("ghcr.io/org/app:v1.2.3", "ghcr.io", "org/app", "v1.2.3", None),
        ("Registry.Example/a", "registry.example", "a", "latest", None),
        ("[::1]:5000/a:b", "[::1]:5000", "a", "b", None),
        ("busybox@" + D, "docker.io", "library/busybox", None, D),
        ("a__b/c-d/e.f_g--h:_T.a-g", "docker.io", "a__b/c-d/e.f_g--h", "_T.a-g", None),
    ],
)
def test_parse_normalises(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    again = Reference.parse(ref.canonical)
    assert again == ref
    assert Reference.parse(ref.familiar) == ref


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "busy box",
        "Busybox",
        "foo/Bar",
        "busybox:",
        ":tag",
        "busybox::tag",
        "busybox:-tag",
        "busybox:" + "a" * 129,
        "busybox@sha256:abc",
        "busybox@sha256:" + "A" * 64,
        "busybox@md5:" + "a" * 32,
        "busybox@" + D + "@" + D,
        "foo//bar",
        "foo/bar/",
        "/foo",
        "foo/../bar",
        "foo/./bar",
        "foo/.bar",
        "foo_/bar",
        "foo-/bar",
        "foo.-bar",
        "foo___bar",
        "-host.io/a",
        "host.io:99999/a",
        "host.io/",
        "a/" + "b" * 260,
        "ex.io/%2e%2e/x",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Reference.parse(text)
    assert info.value.category == Category.IMAGE
    assert "invalid image reference" in info.value.message


def test_uppercase_names_the_problem() -> None:
    with pytest.raises(InvalidArgument, match="lowercase"):
        Reference.parse("foo/Bar")


def test_name_length_limit_is_255_including_registry() -> None:
    ok = "r.io/" + "a" * 250
    assert len(ok) == 255
    Reference.parse(ok)
    with pytest.raises(InvalidArgument):
        Reference.parse("r.io/" + "a" * 251)


def test_tag_128_ok() -> None:
    assert Reference.parse("busybox:" + "a" * 128).tag == "a" * 128


def test_forms() -> None:
    ref = Reference.parse("busybox")
    assert ref.canonical == str(ref) == "docker.io/library/busybox:latest"
    assert ref.familiar == "busybox:latest"
    assert ref.name == "docker.io/library/busybox"
    assert ref.object == "latest"
    assert ref.api_host == "registry-1.docker.io"
    pinned = ref.with_digest(D)
    assert pinned.canonical == f"docker.io/library/busybox:latest@{D}"
    assert pinned.object == D
    assert Reference.parse("foo/bar:x").familiar == "foo/bar:x"
    assert Reference.parse("docker.io/library/a/b").familiar == "library/a/b:latest"
    assert Reference.parse("localhost:5000/x").familiar == "localhost:5000/x:latest"
    assert Reference.parse("localhost:5000/x").api_host == "localhost:5000"
    assert Reference.parse("x", default_tag=None).tag is None
    with pytest.raises(InvalidArgument):
        ref.with_digest("sha256:zz")
    with pytest.raises(InvalidArgument):
        ref.with_tag("bad tag")


def test_reference_is_hashable_and_immutable() -> None:
    a, b = Reference.parse("busybox"), Reference.parse("docker.io/library/busybox:latest")
    assert {a, b} == {a}
    with pytest.raises(AttributeError):
        a.tag = "x"  # type: ignore[misc]


def test_helpers() -> None:
    assert split_name("busybox") == ("docker.io", "library/busybox")
    assert split_name("ghcr.io/a/b") == ("ghcr.io", "a/b")
    assert split_name("127.0.0.1:5000/test/busybox") == ("127.0.0.1:5000", "test/busybox")
    assert validate_digest("sha512:" + "0" * 128)
    with pytest.raises(InvalidArgument):
        validate_digest("sha512:" + "0" * 64)
    with pytest.raises(InvalidArgument):
        validate_repository("a/B")
    with pytest.raises(InvalidArgument):
        validate_repository("")
