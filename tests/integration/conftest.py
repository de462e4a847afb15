# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Session-wide end-to-end builds: each profile is built once and shared by every slow test.

PIBAKE_E2E_REUSE=1 reuses the builds already in tests/output/e2e/<profile>/deploy (for working on the slow tests;
CI always builds).
"""

import json
import os
import tempfile

import pytest

from tests.support import cubeos_images, e2e
from tests.support.fixtures import registry, skopeo  # noqa: F401  (pytest fixtures used below)

TEST_ROLES = os.path.join(e2e.REPO, "tests", "integration", "roles")
os.environ.setdefault("ANSIBLE_ROLES_PATH", TEST_ROLES)


REUSE = os.environ.get("PIBAKE_E2E_REUSE") == "1"
CUBEOS_IMAGES_JSON = os.path.join(e2e.OUTPUT, "cubeos", "test-images.json")


def _build(profile, *extra):
    if REUSE:
        reused = e2e.existing_build(profile)
        if reused is not None:
            return reused
    return e2e.run_build(profile, *extra)


@pytest.fixture(scope="session")
def cubeos_test_images(request, tmp_path_factory):
    """Small arm64 stand-ins for the profile's stack images, pinned by digest in the local registry."""
    if REUSE and os.path.exists(CUBEOS_IMAGES_JSON) and e2e.existing_build("cubeos") is not None:
        with open(CUBEOS_IMAGES_JSON, encoding="utf-8") as handle:
            return json.load(handle)
    images = cubeos_images.push_stack_images(request.getfixturevalue("registry"), request.getfixturevalue("skopeo"),
                                             str(tmp_path_factory.mktemp("cubeos-images")))
    os.makedirs(os.path.dirname(CUBEOS_IMAGES_JSON), exist_ok=True)
    with open(CUBEOS_IMAGES_JSON, "w", encoding="utf-8") as handle:
        json.dump(images, handle, indent=1)
    return images


@pytest.fixture(scope="session")
def cubeos_build(cubeos_test_images):
    # The profile's stacks run these images on first boot (the QEMU boot test checks them).
    # xz as by default, at level 1: the same code path at ~40 % of the CPU time of level 6 (11.8 s vs 31.3 s user
    # on 96 MiB of a built root; output 10 % larger).
    return _build("cubeos", "-e", f"@{cubeos_test_images['vars_file']}", "-e", "finalize_compression_level=1")


@pytest.fixture(scope="session")
def ourbox_build():
    # zstd: xz (the default, which the cubeos build covers) would add minutes of CPU to every test run.
    return _build("ourbox-mini", "-e", "finalize_compression=zstd", "-e", "finalize_compression_level=3")


@pytest.fixture(scope="session")
def cubeos_root(cubeos_build):
    assert cubeos_build.returncode == 0 and cubeos_build.image, cubeos_build.stdout[-4000:]
    with e2e.reattached(cubeos_build.image, tempfile.mkdtemp(prefix="pibake-e2e-")) as root:
        yield e2e.host(root)


@pytest.fixture(scope="session")
def ourbox_root(ourbox_build):
    assert ourbox_build.returncode == 0 and ourbox_build.image, ourbox_build.stdout[-4000:]
    with e2e.reattached(ourbox_build.image, tempfile.mkdtemp(prefix="pibake-e2e-")) as root:
        yield e2e.host(root)
