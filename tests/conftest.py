"""Shared fixtures for the whole suite.

Session fixtures (one instance per test run, shared by all xdist workers
through ``helpers.testenv``; started lazily, the first time a test asks):

    registry       Debian docker-registry on 127.0.0.1: .host "127.0.0.1:PORT", .url
    test_images    pushed test images (see tests/fixtures/images.py): .busybox,
                   .multilayer, .multiarch, .zstd, .uncompressed, .big, or ["name"];
                   each with .ref, .manifest_digest, .oci_layout, .layers, ...
                   .oci_layout is the shared build cache (.test-work/images/): READ-ONLY,
                   copy it (shutil.copytree) before changing anything in it
    unpriv_user    the unprivileged test user (vapptest): .name .uid .gid .home
                   .subuid_start .subuid_count ...; run commands with
                   tests.helpers.users.run_as(user, argv)
    postgres_url   a PostgreSQL database of this worker's own on a server shared by
                   the run: "postgresql://vapp@127.0.0.1:PORT/vapptest_<hex>"
    postgres       the server (helpers.postgres.PostgresInfo); create more databases
                   with helpers.postgres.create_database(postgres)

Helpers: tests.helpers.ports.free_port(), tests.helpers.users.run_as/popen_as,
tests.helpers.registry.running_registry(dir, proxy_url=...) for a private
registry, tests.fixtures.images.MULTILAYER_EXPECTED for what "multilayer" unpacks to.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.images import TestImage, cached_images, push_all
from tests.helpers.postgres import PostgresInfo, create_database, start_postgres
from tests.helpers.registry import RegistryInfo, start_registry
from tests.helpers.testenv import ENV_VAR, TestEnv
from tests.helpers.users import UnprivUser, lookup_user


def pytest_configure(config: pytest.Config) -> None:
    # Root and rootless are both the product: the suite runs as root and drops to the
    # unprivileged 'vapptest' user itself. Refuse loudly rather than skip half of it.
    if os.geteuid() != 0:
        raise pytest.UsageError("the test suite must run as root (it drops to 'vapptest' for the rootless "
                                "tests): run 'sudo make test'")
    # Only the process that owns the run creates the environment; xdist workers
    # (which have ``workerinput``) and nested runs inherit VAPP_TEST_ENV.
    if hasattr(config, "workerinput") or TestEnv.from_environ() is not None:
        return
    env = TestEnv.create()
    os.environ[ENV_VAR] = str(env.env_file)
    config.stash[_OWNED_ENV] = env


def pytest_unconfigure(config: pytest.Config) -> None:
    env = config.stash.get(_OWNED_ENV, None)
    if env is not None:
        env.teardown()
        os.environ.pop(ENV_VAR, None)


_OWNED_ENV = pytest.StashKey[TestEnv]()


def _env() -> TestEnv:
    env = TestEnv.from_environ()
    if env is None:
        raise RuntimeError(f"{ENV_VAR} is not set: tests/conftest.py's pytest_configure did not run")
    return env


def _start_registry(workdir: Any) -> tuple[dict[str, Any], list[int]]:
    info = start_registry(workdir)
    return info.to_json(), [info.pid]


@pytest.fixture(scope="session")
def registry() -> RegistryInfo:
    return RegistryInfo.from_json(_env().shared("registry", _start_registry))


class TestImages:
    """The pushed images by name: ``images.busybox`` or ``images["busybox"]``."""

    __test__ = False

    def __init__(self, images: dict[str, TestImage]) -> None:
        self._images = images

    def __getitem__(self, name: str) -> TestImage:
        return self._images[name]

    def __getattr__(self, name: str) -> TestImage:
        try:
            return self._images[name]
        except KeyError:
            raise AttributeError(name) from None

    def __iter__(self) -> Iterator[TestImage]:
        return iter(self._images.values())

    def names(self) -> list[str]:
        return list(self._images)


@pytest.fixture(scope="session")
def test_images(registry: RegistryInfo) -> TestImages:
    def start(_workdir: Any) -> tuple[dict[str, Any], list[int]]:
        pushed = push_all(cached_images(), registry.host)
        return {name: img.to_json() for name, img in pushed.items()}, []

    data = _env().shared("images", start)
    return TestImages({name: TestImage.from_json(doc) for name, doc in data.items()})


@pytest.fixture(scope="session")
def unpriv_user() -> UnprivUser:
    return lookup_user()


@pytest.fixture(scope="session")
def postgres() -> PostgresInfo:
    def start(workdir: Any) -> tuple[dict[str, Any], list[int]]:
        info = start_postgres(workdir)
        return info.to_json(), [info.pid]

    return PostgresInfo.from_json(_env().shared("postgres", start))


@pytest.fixture(scope="session")
def postgres_url(postgres: PostgresInfo) -> str:
    return create_database(postgres)


@pytest.fixture
def user_tmp(unpriv_user: UnprivUser) -> Iterator[Path]:
    """A temp dir owned by the unprivileged user, outside pytest's 0700 tmp tree.

    Removed as root afterwards: rootless containers leave files owned by
    subordinate ids that the user itself cannot always delete.
    """
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vapp-user-"))
    os.chown(path, unpriv_user.uid, unpriv_user.gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
