# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_ext4 on a filesystem inside an image file, through ``?offset=`` — no root, no loop."""

import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _ext4
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from tests.support.finalize_images import image_copy, root_offset


@pytest.fixture
def img(tmp_path):
    path = image_copy(tmp_path, data_mb=1, deleted_mb=2, fat_deleted_mb=0)
    return path, root_offset(path)


def test_geometry_and_free_ranges_agree(img):
    path, off = img
    assert _ext4.is_ext(path, off) and not _ext4.is_ext(path, 8192 * 512)
    geo = _ext4.geometry(path, off)
    assert geo["block_size"] == 4096 and geo["clean"]
    _ext4.fsck(path, off, repair=True)         # brings the superblock's summary counts in line
    geo = _ext4.geometry(path, off)
    free = sum(last - first + 1 for first, last in _ext4.free_ranges(path, off))
    assert free == geo["free"] and geo["used"] + geo["free"] == geo["blocks"]


def test_read_file_follows_relative_symlinks(img):
    path, off = img
    assert _ext4.read_file(path, off, "/etc/hostname") == b"pibake-test\n"
    assert b"bookworm" in _ext4.read_file(path, off, "/etc/os-release")
    assert _ext4.read_file(path, off, "/etc/missing") is None
    assert _ext4.stat(path, off, "/etc/os-release")["type"] == "symlink"


def test_write_symlink_remove_round_trip_checks_clean(img):
    path, off = img
    _ext4.write_file(path, off, "/var/lib/new/dir/marker", b"x\n", 0o600)
    assert _ext4.read_file(path, off, "/var/lib/new/dir/marker") == b"x\n"
    _ext4.write_file(path, off, "/var/lib/new/dir/marker", b"y\n")
    assert _ext4.read_file(path, off, "/var/lib/new/dir/marker") == b"y\n"
    _ext4.symlink(path, off, "/etc/link", "../var/lib/new/dir/marker")
    assert _ext4.read_file(path, off, "/etc/link") == b"y\n"
    assert ("marker", 0o100644) in _ext4.listdir(path, off, "/var/lib/new/dir")
    assert _ext4.remove(path, off, "/var/lib/new/dir/marker") and not _ext4.exists(path, off, "/var/lib/new/dir/marker")
    assert _ext4.fsck(path, off, repair=False) == 0


def test_fsck_reports_a_corrupt_filesystem_in_one_sentence(img):
    path, off = img
    spec = f"{path}?offset={off}"
    block = subprocess.run(["debugfs", "-R", "blocks /etc/hostname", spec], check=True,
                           capture_output=True).stdout.split()[0].decode()
    subprocess.run(["debugfs", "-w", "-R", f"freeb {block}", spec], check=True, capture_output=True)
    with pytest.raises(PibakeError, match="e2fsck found errors"):
        _ext4.fsck(path, off, repair=False)
    assert _ext4.fsck(path, off, repair=True) == 1      # preen fixes a block bitmap difference
    assert _ext4.fsck(path, off, repair=False) == 0
