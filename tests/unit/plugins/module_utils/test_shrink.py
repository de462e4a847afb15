# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_shrink without root: the minimum search on metadata copies and check mode (the real shrink, which needs a
loop device, is in tests/integration/test_finalize.py)."""

import os
import subprocess
import tempfile

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _shrink
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from tests.support.finalize_images import image_copy, root_offset


def test_minimum_is_below_resize2fs_estimate_and_really_fits(tmp_path):
    img = image_copy(tmp_path, data_mb=6, deleted_mb=0, fat_deleted_mb=0, size_mb=544)
    off = root_offset(img)
    geo = _ext4.geometry(img, off)
    with tempfile.TemporaryDirectory(dir=tmp_path) as work:
        found = _shrink.find_minimum(img, off, geo, work, lambda _m: None)
        assert found["minimum"] <= found["estimate"]
        assert found["minimum"] <= geo["used"] * 1.02
        assert _shrink.fits(img, off, found["minimum"], work)
        assert not _shrink.fits(img, off, geo["used"] // 2, work)
        assert os.listdir(work) == []          # trial copies are removed
    assert os.path.getsize(img) == 544 << 20    # the image itself was not touched
    assert _ext4.fsck(img, off, repair=False) == 0


def test_check_mode_reports_without_changing(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    size, data = os.path.getsize(img), open(img, "rb").read()
    result = _shrink.shrink(img, check_mode=True)
    assert not result["changed"] and result["size_after"] < size
    assert result["expansion"]["actions"] == ["pibake-grow-root.service: created /var/lib/pibake/grow-root"]
    assert open(img, "rb").read() == data


def test_refuses_a_non_ext_last_partition(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    with open(img, "r+b") as handle:        # wipe the ext4 magic
        handle.seek(root_offset(img) + 1024 + 56)
        handle.write(b"\0\0")
    with pytest.raises(PibakeError, match="not ext2/3/4"):
        _shrink.shrink(img)


def test_no_expansion_mechanism_fails_before_shrinking(tmp_path):
    img = image_copy(tmp_path, expansion="none", data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    size = os.path.getsize(img)
    geo = _ext4.geometry(img, root_offset(img))
    with pytest.raises(PibakeError, match="no first-boot root expansion"):
        _shrink.shrink(img)
    assert os.path.getsize(img) == size and _ext4.geometry(img, root_offset(img))["blocks"] == geo["blocks"]


def _journal_fields(img, off):
    sb = _ext4.superblock(img, off)
    return {key: value for key, value in sb.items() if key.startswith(("Journal", "Total journal", "Filesystem f"))}


def _stale_journal(tmp_path):
    """A test image whose (empty) journal's log blocks hold old data, as a build leaves them."""
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    off = root_offset(img)
    ranges = _shrink.journal_blocks(img, off)
    assert sum(count for _first, count in ranges) == int(_ext4.superblock(img, off)["Total journal blocks"]) - 1
    stale = [ranges[0][0], ranges[0][0] + 7, ranges[-1][0] + ranges[-1][1] - 1]   # first, middle, last log block
    with open(img, "r+b") as handle:
        for block in stale:
            handle.seek(off + block * 4096)
            handle.write(b"\xc0\x3b\x39\x98" + os.urandom(4092))     # jbd2 magic: old descriptor-like blocks
    return img, off, stale


def test_clear_journal_zeroes_stale_log_blocks_and_keeps_the_journal(tmp_path):
    img, off, stale = _stale_journal(tmp_path)
    before = _journal_fields(img, off)
    with open(img, "rb") as handle:
        handle.seek(off + (stale[0] - 1) * 4096)
        journal_sb = handle.read(4096)
    assert _shrink.clear_journal(img, off) == 3 * 4096
    with open(img, "rb") as handle:
        for block in stale:
            handle.seek(off + block * 4096)
            assert handle.read(4096) == bytes(4096)
        handle.seek(off + (stale[0] - 1) * 4096)
        assert handle.read(4096) == journal_sb                   # the journal superblock is kept
    assert _journal_fields(img, off) == before                   # same journal: size, inode, features, sequence
    assert _ext4.fsck(img, off, repair=False) == 0
    assert _shrink.clear_journal(img, off) == 0                  # a second run is a no-op


def test_clear_journal_leaves_a_journal_that_needs_recovery(tmp_path):
    img, off, stale = _stale_journal(tmp_path)
    with open(img, "r+b") as handle:                             # s_start = 1 in the journal superblock
        handle.seek(off + (stale[0] - 1) * 4096 + 28)
        handle.write((1).to_bytes(4, "big"))
    assert _ext4.superblock(img, off)["Journal start"] == "1"
    assert _shrink.journal_blocks(img, off) == []
    data = open(img, "rb").read()
    assert _shrink.clear_journal(img, off) == 0
    assert open(img, "rb").read() == data


def test_clear_journal_keeps_the_block_map_of_an_indirect_mapped_journal(tmp_path):
    # ext3-style journal inode: its map has an indirect block between the data blocks, which must stay
    img = str(tmp_path / "ext3.img")
    subprocess.run(["truncate", "-s", "64M", img], check=True)
    subprocess.run(["mkfs.ext3", "-q", "-F", "-b", "4096", "-J", "size=4", img], check=True)
    ranges = _shrink.journal_blocks(img, 0)
    assert sum(count for _first, count in ranges) == 1023 and len(ranges) == 2
    indirect = ranges[0][0] + ranges[0][1]                       # (IND) sits between the two runs
    assert ranges[1][0] == indirect + 1
    with open(img, "r+b") as handle:
        for first, count in ranges:
            handle.seek(first * 4096)
            handle.write(os.urandom(count * 4096))
        handle.seek(indirect * 4096)
        map_block = handle.read(4096)
    assert _shrink.clear_journal(img, 0) == 1023 * 4096
    with open(img, "rb") as handle:
        handle.seek(indirect * 4096)
        assert handle.read(4096) == map_block
    assert _ext4.fsck(img, 0, repair=False) == 0
