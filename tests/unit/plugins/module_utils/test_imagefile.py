# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_imagefile: partition tables, PARTUUIDs, holders, hole punching — no root needed."""

import os

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _imagefile
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from tests.support.finalize_images import image_copy


def test_read_table_mbr_gives_offsets_and_partuuids(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    table = _imagefile.read_table(img)
    assert table.label == "dos" and table.disk_id == "0x5eed1e55"
    boot, root = table.partitions
    assert boot.offset == 8192 * 512 and boot.is_fat_type and not root.is_fat_type
    assert table.last is root and root.end == os.path.getsize(img)
    assert table.partuuid(root) == "5eed1e55-02"


def test_read_table_gpt_uses_partition_guids(tmp_path):
    img = image_copy(tmp_path, label="gpt", data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    table = _imagefile.read_table(img)
    assert table.label == "gpt"
    assert table.partuuid(table.partitions[1]) == table.partitions[1].uuid.lower()


def test_read_table_refuses_a_file_without_table(tmp_path):
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(1 << 20))
    with pytest.raises(PibakeError, match="partition table"):
        _imagefile.read_table(str(blank))
    with pytest.raises(PibakeError, match="does not exist"):
        _imagefile.read_table(str(tmp_path / "missing.img"))


def test_unattached_image_has_no_holders(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    assert _imagefile.holders(img) == []
    _imagefile.ensure_detached(img)


def test_punch_hole_zeroes_and_deallocates_but_keeps_size(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(4 << 20))
    before = _imagefile.allocated_bytes(str(path))
    fd = os.open(path, os.O_RDWR)
    try:
        _imagefile.punch_hole(fd, 1 << 20, 2 << 20)
        ranges = list(_imagefile.data_ranges(fd))
    finally:
        os.close(fd)
    data = path.read_bytes()
    assert len(data) == 4 << 20
    assert data[1 << 20:3 << 20] == bytes(2 << 20)
    assert _imagefile.allocated_bytes(str(path)) <= before - (2 << 20)
    assert ranges == [(0, 1 << 20), (3 << 20, 1 << 20)]
