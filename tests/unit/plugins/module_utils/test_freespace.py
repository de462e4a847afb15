# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_freespace with the punch method (no root): deleted data leaves the file, files and fsck stay intact."""

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _freespace
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from tests.support.finalize_images import image_copy, root_offset


def test_punch_discards_deleted_data_in_both_filesystems(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=8, fat_deleted_mb=4)
    off = root_offset(img)
    hostname = _ext4.read_file(img, off, "/etc/hostname")
    result = _freespace.discard(img, "punch")
    assert result["changed"] and result["method"] == "punch"
    assert result["allocated_after"] <= result["allocated_before"] - (11 << 20)
    kinds = {p["fstype"]: p["discarded_bytes"] for p in result["partitions"]}
    assert kinds["vfat"] > 0 and kinds["ext4"] > 0
    assert _ext4.read_file(img, off, "/etc/hostname") == hostname
    assert _ext4.fsck(img, off, repair=False) == 0


def test_check_mode_and_none_touch_nothing(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=2, fat_deleted_mb=0)
    for kwargs in ({"method": "punch", "check_mode": True}, {"method": "none"}):
        result = _freespace.discard(img, **kwargs)
        assert result["allocated_after"] == result["allocated_before"]
        assert all(p["discarded_bytes"] == 0 for p in result["partitions"])


def test_unknown_method_is_refused(tmp_path):
    with pytest.raises(PibakeError, match="Unknown free-space method"):
        _freespace.discard(str(tmp_path / "x.img"), "shred")
