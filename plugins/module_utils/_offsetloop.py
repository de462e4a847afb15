# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Short-lived offset loop devices (and a temporary mount) for the finalize steps that need the kernel:
resize2fs, fstrim, zerofree. Context managers over ``_loop`` and ``_mounts``: only what they attached or
mounted is ever detached or unmounted, always in ``finally``; partition scanning (``-P``) is never used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from ansible_collections.pibake.image.plugins.module_utils import _loop, _mounts
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


@contextlib.contextmanager
def attached(path: str, offset: int, size: int) -> Iterator[str]:
    """A loop device for ``size`` bytes at ``offset`` of ``path``, detached on exit whatever happens."""
    if os.geteuid() != 0:
        raise PibakeError("Attaching a loop device needs root; run the finalize steps as root (become: true).")
    device = _loop.attach(path, offset, size)
    try:
        yield device
    finally:
        _loop.detach(device)


@contextlib.contextmanager
def mounted(device: str, fstype: str = "ext4") -> Iterator[str]:
    """``device`` mounted on a fresh private directory, unmounted and the directory removed on exit."""
    where = tempfile.mkdtemp(prefix="pibake-finalize-mnt-")
    try:
        _mounts.mount(device, where, fstype)
        try:
            yield where
        finally:
            _mounts.unmount(where)
    finally:
        shutil.rmtree(where, ignore_errors=True)
