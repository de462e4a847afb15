# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_data_disk helpers that need no disk (formatting itself: tests/integration/test_flash.py)."""

from __future__ import annotations

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _blockdev as bd
from ansible_collections.pibake.image.plugins.module_utils import _data_disk
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


@pytest.mark.parametrize(
    "node, expected",
    [("/dev/nvme1n1", "/dev/nvme1n1p1"), ("/dev/sdb", "/dev/sdb1"), ("/dev/mmcblk0", "/dev/mmcblk0p1"),
     ("/dev/loop3", "/dev/loop3p1")],
)
def test_partition_node_names(node, expected):
    assert _data_disk.partition_node(node, 1) == expected


def test_describe_contents_names_what_is_there():
    table = bd.Probe({"PTTYPE": "dos"})
    places = [
        bd.Place(0, 0, 1, table, None),
        bd.Place(1, 4 << 20, 1, bd.Probe({"TYPE": "vfat", "LABEL": "bootfs"}), None),
        bd.Place(2, 8 << 20, 1, bd.Probe({"TYPE": "ext4", "LABEL": "rootfs"}), "rootfs"),
    ]
    text = _data_disk.describe_contents(bd.Contents(table, places), [])
    assert text == "a dos partition table with 2 partition(s); vfat labelled bootfs on partition 1; ext4 labelled rootfs on partition 2"
    assert _data_disk.describe_contents(None, []) == "a partition table pibake cannot read"
    assert "signatures" in _data_disk.describe_contents(bd.Contents(bd.Probe(), places[:1]), ["zfs_member at 0x3f000"])


def test_label_must_fit_ext4():
    with pytest.raises(PibakeError, match="does not fit ext4"):
        _data_disk.prepare("/dev/null", label="A_LABEL_FAR_TOO_LONG")
