# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Fixtures of the fault suite: a served base image, a local registry, a loop device to flash, one folder for all."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.faults import harness
from tests.support import leaks
from tests.support.http_server import FileServer
from tests.support.registry import LocalRegistry

# The base image is served this slowly so that the download phase lasts long enough to be interrupted.
DOWNLOAD_RATE = 512 << 10
FLASH_DISK = 256 << 20

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/dev/loop-control") or not os.path.exists(harness.PLAYBOOK_BIN),
    reason="needs root, loop devices and the .venv (make venv)",
)


@pytest.fixture(scope="module")
def served_base(tmp_path_factory):
    """The mini arm64 image as .img.xz behind a slow, Range-capable HTTP server on 127.0.0.1."""
    folder = str(tmp_path_factory.mktemp("served"))
    packed, digest = harness.make_served_image(folder)
    with FileServer(folder, rate=DOWNLOAD_RATE) as server:
        yield {"url": server.url(os.path.basename(packed)), "sha256": digest, "path": packed, "server": server,
               "folder": folder}


@pytest.fixture(scope="module")
def local_registry():
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="module")
def fault_env(tmp_path_factory, served_base, local_registry):
    """One folder for everything the pipeline writes, and a loop device on a file in it to flash to."""
    root = str(tmp_path_factory.mktemp("faults"))
    backing = os.path.join(root, "flash-disk.bin")
    with open(backing, "wb") as handle:
        handle.truncate(FLASH_DISK)
    device = subprocess.run(["losetup", "-f", "--show", backing], capture_output=True, text=True,
                            check=True).stdout.strip()
    try:
        yield harness.FaultEnv(os.path.join(root, "run"), served_base["url"], served_base["sha256"],
                               local_registry.address, device, served_base["path"])
    finally:
        for attempt in range(10):
            # Only the device this fixture attached, and only while it still shows our backing file.
            if not any(loop["name"] == device and loop["back-file"] == backing for loop in leaks.loops()):
                break
            if subprocess.run(["losetup", "-d", device], capture_output=True).returncode == 0:
                break
            time.sleep(0.3 * (attempt + 1))
