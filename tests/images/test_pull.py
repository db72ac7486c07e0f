"""Pull from the suite's real registry, unpack into layer snapshots, compare with umoci."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.errors import NotFound
from app.runtime.images.pull import PullEvent
from app.runtime.snapshots.copy import merge_layers
from tests.images.conftest import PullEnv, tree, umoci_rootfs


def _flatten(env: PullEnv, chains: list[str], dest: Path) -> Path:
    dest.mkdir()
    merge_layers([env.layers.fs(c) for c in chains], dest)
    return dest


@pytest.mark.parametrize("name", ["busybox", "multilayer", "zstd", "uncompressed"])
async def test_pull_matches_umoci(pull_env: PullEnv, test_images, name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    img = test_images[name]
    events: list[PullEvent] = []
    res = await pull_env.puller().pull(img.ref, events.append)
    assert res.image_id == img.config_digest
    assert res.manifest_digest == img.manifest_digest
    assert [d.digest for d in res.layers] == img.layers
    assert all(pull_env.layers.has(c) for c in res.chain_ids)
    ours = tree(_flatten(pull_env, res.chain_ids, tmp_path / "ours"))
    # umoci 0.4.7 cannot read zstd layers; the zstd image holds the busybox rootfs
    # (same diff ID), so its umoci reference is the busybox layout's.
    ref_img = test_images.busybox if name == "zstd" else img
    if name == "zstd":
        assert res.diff_ids == (await pull_env.puller().pull(test_images.busybox.ref)).diff_ids
    theirs = tree(umoci_rootfs(ref_img.oci_layout, tmp_path / "umoci"))
    assert ours == theirs
    # progress: per layer, monotonic bytes, ends done == total
    for digest in img.layers:
        evs = [e for e in events if e.digest == digest and e.status == "downloading"]
        assert [e.done for e in evs] == sorted(e.done for e in evs)
        assert evs and evs[-1].done == evs[-1].total
    assert [e.status for e in events if e.digest == img.layers[-1]][-1] == "done"


async def test_second_pull_is_cached(pull_env: PullEnv, test_images) -> None:  # type: ignore[no-untyped-def]
    first = await pull_env.puller().pull(test_images.multilayer.ref)
    assert first.downloaded == test_images.multilayer.layers
    events: list[PullEvent] = []
    again = await pull_env.puller().pull(test_images.multilayer.ref, events.append)
    assert again.downloaded == []
    assert {e.status for e in events if e.digest} <= {"cached", "waiting"}


async def test_concurrent_pulls_share_download(pull_env: PullEnv, test_images) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    puller = pull_env.puller()
    a, b = await asyncio.gather(puller.pull(test_images.big.ref), puller.pull(test_images.big.ref))
    assert a.chain_ids == b.chain_ids
    assert sorted(a.downloaded + b.downloaded) == sorted(test_images.big.layers), "each layer fetched once"


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64/v8", "linux/arm64"])
async def test_multiarch_selects_platform(pull_env: PullEnv, test_images, platform: str) -> None:  # type: ignore[no-untyped-def]
    img = test_images.multiarch
    res = await pull_env.puller(platform).pull(img.ref)
    want = next(d for p, d in img.platforms.items() if p.startswith(platform))
    assert res.manifest_digest == want
    assert res.index_digest == img.manifest_digest


async def test_missing_platform_fails_clearly(pull_env: PullEnv, test_images) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFound) as info:
        await pull_env.puller("linux/s390x").pull(test_images.multiarch.ref)
    assert "s390x" in info.value.message
    with pytest.raises(NotFound):  # single-arch image for another architecture: no fallback
        await pull_env.puller("linux/arm64").pull(test_images.busybox.ref)
    assert list(pull_env.layers.list()) == []


async def test_unknown_image(pull_env: PullEnv, registry) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NotFound):
        await pull_env.puller(retry_deadline=1).pull(f"{registry.host}/test/nope:latest")
