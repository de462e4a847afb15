# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""losetup failures become one sentence naming the fix (no loop device is attached here)."""

import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _loop
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def _losetup_says(monkeypatch, stderr: bytes):
    def fake_run(argv, **_kwargs):
        return subprocess.CompletedProcess(argv, 1, b"", stderr)

    monkeypatch.setattr(_loop, "run", fake_run)


@pytest.mark.parametrize("stderr", [
    b"losetup: cannot find an unused loop device\n",       # util-linux 2.38 (Debian 12)
    b"losetup: could not find any free loop device\n",     # older util-linux
])
def test_no_free_loop_device_names_the_fix(monkeypatch, stderr):
    _losetup_says(monkeypatch, stderr)
    with pytest.raises(PibakeError, match=r"^No free loop device is available; run .*clean\.yml"):
        _loop.attach("/tmp/x.img", 4194304, 1048576)


def test_other_losetup_failures_say_what_failed(monkeypatch):
    _losetup_says(monkeypatch, b"losetup: /tmp/x.img: failed to set up loop device: Permission denied\n")
    with pytest.raises(PibakeError, match=r"Attaching /tmp/x.img at offset 4194304 failed .*Permission denied"):
        _loop.attach("/tmp/x.img", 4194304, 1048576)
