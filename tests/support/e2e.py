# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The shared end-to-end images: each profile is built once per test run and reused by every slow test."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Optional

import testinfra

from ansible_collections.pibake.image.plugins.module_utils import _lease, _session
from ansible_collections.pibake.image.plugins.module_utils._partitions import read_table

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUTPUT = os.path.join(REPO, "tests", "output", "e2e")


@dataclass
class Build:
    profile: str
    deploy: str
    image: str
    returncode: int
    stdout: str
    seconds: float

    @property
    def os_info(self) -> Dict[str, str]:
        values = {}
        with open(os.path.join(self.deploy, "os.info"), encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.strip().partition("=")
                values[key] = value.strip('"')
        return values


def run_build(profile: str, *extra: str, deploy: str = "") -> Build:
    deploy = deploy or os.path.join(OUTPUT, profile, "deploy")
    os.makedirs(os.path.dirname(deploy), exist_ok=True)
    env = dict(os.environ)
    env.pop("PIBAKE_BUILD_LOG", None)
    start = time.monotonic()
    proc = subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "playbooks/build-image.yml", "-i",
         f"inventories/{profile}", "-e", "variant=dev", "-e", "version=e2e", "-e", f"pibake_deploy_dir={deploy}",
         # The shrunk raw image too: the slow tests attach it and boot it.
         "-e", "pibake_deploy_raw_image=true",
         "-e", f"pibake_work_dir={os.path.join(OUTPUT, profile, 'work')}", "-e", "pibake_cache=off", *extra],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seconds = time.monotonic() - start
    with open(os.path.join(OUTPUT, profile, "ansible-output.log"), "w", encoding="utf-8") as handle:
        handle.write(proc.stdout)
    image = ""
    if os.path.isdir(deploy):
        images = [name for name in os.listdir(deploy) if name.endswith(".img")]
        image = os.path.join(deploy, images[0]) if images else ""
    return Build(profile, deploy, image, proc.returncode, proc.stdout, seconds)


def existing_build(profile: str) -> Optional[Build]:
    """The build already in tests/output/e2e/<profile>/deploy (image and os.info present), or None."""
    deploy = os.path.join(OUTPUT, profile, "deploy")
    images = sorted(n for n in os.listdir(deploy) if n.endswith(".img")) if os.path.isdir(deploy) else []
    if not images or not os.path.exists(os.path.join(deploy, "os.info")):
        return None
    return Build(profile, deploy, os.path.join(deploy, images[0]), 0, "(reused build)", 0.0)


@contextlib.contextmanager
def reattached(image: str, work: str) -> Iterator[str]:
    """Attach a sparse copy of a built image (no DNS, no trim, boot files not written back) and yield its root.

    A copy, because attaching mounts the root read-write and installs the build's guards: the release image must
    stay as built, and tests that read it directly (debugfs, fsck) must never see a mounted, half-flushed state.
    """
    copy = os.path.join(work, "reattached.img")
    subprocess.run(["cp", "--sparse=always", image, copy], check=True)
    try:
        session = _session.attach_image(copy, work, owner_pid=os.getpid(), dns=False)
        try:
            yield session.root
        finally:
            _session.detach(_lease.path_of(session.record), write_back=False, trim=False)
    finally:
        os.unlink(copy)


def host(root: str):
    """A testinfra host on a re-attached image root (testinfra's chroot backend)."""
    return testinfra.get_host(root, connection="chroot")


def partition_region(image: str, number: int, dest: str) -> str:
    """Copy one partition out of the image (sparse) so fsck tools can check it as a file."""
    part = read_table(image).get(number)
    assert part is not None
    subprocess.run(
        ["dd", f"if={image}", f"of={dest}", "bs=1M", f"skip={part.offset}", f"count={part.length}",
         "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"],
        check=True,
    )
    return dest
