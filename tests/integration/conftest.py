# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Session-wide end-to-end builds: each profile is built once and shared by every slow test."""

import os
import tempfile

import pytest

from tests.support import e2e

TEST_ROLES = os.path.join(e2e.REPO, "tests", "integration", "roles")
os.environ.setdefault("ANSIBLE_ROLES_PATH", TEST_ROLES)


@pytest.fixture(scope="session")
def cubeos_build():
    return e2e.run_build("cubeos")


@pytest.fixture(scope="session")
def ourbox_build():
    return e2e.run_build("ourbox-mini")


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
