# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""PIBAKE_BINFMT_DIR: a host without binfmt_misc is refused with one sentence (nothing is mounted here)."""

import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _binfmt
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

FOREIGN = "aarch64" if _binfmt.host_arch() != "aarch64" else "x86_64"


def test_the_default_is_the_kernel_folder(monkeypatch):
    monkeypatch.delenv("PIBAKE_BINFMT_DIR", raising=False)
    assert _binfmt.binfmt_dir() == "/proc/sys/fs/binfmt_misc"


def test_not_mounted_and_not_allowed_to_mount(monkeypatch, tmp_path):
    missing = tmp_path / "binfmt_misc"
    monkeypatch.setenv("PIBAKE_BINFMT_DIR", str(missing))
    with pytest.raises(PibakeError, match=rf"binfmt_misc is not mounted; run `mount -t binfmt_misc binfmt_misc {missing}`"):
        _binfmt.ensure_binfmt(FOREIGN, register=False)


def test_not_mountable(monkeypatch, tmp_path):
    missing = tmp_path / "binfmt_misc"
    monkeypatch.setenv("PIBAKE_BINFMT_DIR", str(missing))
    calls = []

    def fake_run(argv, **_kwargs):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 32, b"", b"mount: mount point does not exist.\n")

    monkeypatch.setattr(_binfmt, "run", fake_run)
    with pytest.raises(PibakeError, match=r"^binfmt_misc cannot be mounted here, .*; build on a host"):
        _binfmt.ensure_binfmt(FOREIGN)
    assert calls == [["mount", "-t", "binfmt_misc", "binfmt_misc", str(missing)]]
