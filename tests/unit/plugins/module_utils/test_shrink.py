# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_shrink without root: the minimum search on metadata copies and check mode (the real shrink, which needs a
loop device, is in tests/integration/test_finalize.py)."""

import os
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
