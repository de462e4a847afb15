# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pytest fixtures around a real local docker-registry, skopeo and small arm64 test images.

Pull them into a test module with::

    from tests.support.fixtures import registry, auth_registry, skopeo  # noqa: F401  (pytest fixtures)

or register them for every test with ``pytest_plugins = ["tests.support.fixtures"]`` in the root conftest.

| fixture | scope | what |
|---|---|---|
| ``registry`` | session | anonymous registry, shared; do not stop it |
| ``auth_registry`` | session | htpasswd registry, user ``pibake`` / password ``auth_registry.password`` |
| ``fresh_registry`` | function | anonymous registry a test may stop/kill/restart |
| ``fresh_auth_registry`` | function | the same with htpasswd auth |
| ``skopeo`` | session | :class:`support.skopeo.Skopeo` with its own policy, registries.d, TMPDIR, cache |
| ``busybox_image`` | session | arm64 busybox image pushed to ``registry``: dict ``ref``, ``digest``, ``pinned`` |
| ``busybox_index`` | session | arm64+amd64 index pushed to ``registry``: dict ``ref``, ``digest``, ``pinned`` |
"""

from __future__ import annotations

import secrets

import pytest

from . import test_images
from .registry import LocalRegistry
from .skopeo import Skopeo

AUTH_USER = "pibake"


@pytest.fixture(scope="session")
def registry():
    """A shared anonymous docker-registry on 127.0.0.1 (session-wide; never stop it in a test)."""
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="session")
def auth_registry():
    """A shared htpasswd-protected registry; credentials in ``.username`` / ``.password``."""
    with LocalRegistry(auth=(AUTH_USER, secrets.token_urlsafe(12))) as reg:
        yield reg


@pytest.fixture
def fresh_registry():
    """A registry of this test alone: it may ``stop()``, ``kill()`` and ``start()`` it again."""
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture
def fresh_auth_registry():
    with LocalRegistry(auth=(AUTH_USER, secrets.token_urlsafe(12))) as reg:
        yield reg


@pytest.fixture(scope="session")
def skopeo(tmp_path_factory):
    tool = Skopeo(str(tmp_path_factory.mktemp("skopeo")))
    try:
        yield tool
    finally:
        tool.close()


def _push(registry, skopeo, tmp_path_factory, repo, build):
    layout_dir = tmp_path_factory.mktemp(repo.replace("/", "-"))
    src = build(str(layout_dir / "layout"))
    ref = registry.ref(repo, "1.0")
    digest = test_images.push_layout(src, ref, skopeo, creds=registry.creds())
    return {"ref": ref, "digest": digest, "pinned": test_images.pinned(ref, digest), "layout": src}


@pytest.fixture(scope="session")
def busybox_image(registry, skopeo, tmp_path_factory):
    """A single-arch linux/arm64 busybox image in ``registry``."""
    return _push(registry, skopeo, tmp_path_factory, "upstream/busybox",
                 lambda d: test_images.build_image_layout(d, arch="arm64"))


@pytest.fixture(scope="session")
def busybox_index(registry, skopeo, tmp_path_factory):
    """A multi-arch (linux/arm64 + linux/amd64) busybox image index in ``registry``."""
    return _push(registry, skopeo, tmp_path_factory, "upstream/busybox-multi",
                 lambda d: test_images.build_index_layout(d, arches=("arm64", "amd64")))
