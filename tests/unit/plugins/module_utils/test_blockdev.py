# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_blockdev parsers and the refusals that need no real disk (loop-device cases: tests/integration/test_flash.py)."""

from __future__ import annotations

import os

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _blockdev as bd
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def record(**changes):
    base = dict(path="/dev/sdx", node="/dev/sdx", name="sdx", devno=(8, 0), sysfs="/sys/block/sdx", size=1 << 30,
                logical_sector=512, read_only=False, partition_number=0, parent="", dm_uuid="", loop=None)
    base.update(changes)
    return bd.BlockDevice(**base)


def test_parse_partx_pairs():
    out = (
        'NR="1" START="8192" SIZE="536870912" UUID="5eed0001-01" NAME="" TYPE="0xc" SCHEME="dos"\n'
        'NR="2" START="1056768" SIZE="2147483648" UUID="5eed0001-02" NAME="" TYPE="0x83" SCHEME="dos"\n'
    )
    parts = bd.parse_partx(out)
    assert [(p.number, p.offset, p.size, p.uuid) for p in parts] == [
        (1, 8192 * 512, 536870912, "5eed0001-01"),
        (2, 1056768 * 512, 2147483648, "5eed0001-02"),
    ]


def test_parse_partx_gpt_name_with_space():
    parts = bd.parse_partx('NR="1" START="2048" SIZE="4194304" UUID="u" NAME="OURBOX\\x20DATA" TYPE="t" SCHEME="gpt"')
    assert parts[0].name == "OURBOX DATA"


def test_parse_export_unescapes():
    assert bd.parse_export("DEVNAME=/dev/sdb\nLABEL=my\\ disk\nTYPE=ext4\n") == {
        "DEVNAME": "/dev/sdb", "LABEL": "my disk", "TYPE": "ext4"}


def test_parse_mountinfo():
    content = (
        "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
        "51 27 7:1 / /tmp/with\\040space rw,relatime shared:1 - ext4 /dev/loop1 rw\n"
        "60 27 0:50 / /proc rw - proc proc rw\n"
    )
    mounts = bd.parse_mountinfo(content)
    assert mounts[0] == bd.Mount((254, 0), "/", "ext4", "/dev/vda")
    assert mounts[1].mountpoint == "/tmp/with space" and mounts[1].devno == (7, 1)
    assert mounts[2].fstype == "proc"


def test_kernel_cmdline_root():
    assert bd._kernel_cmdline_root("console=tty1 root=PARTUUID=5eed0001-02 rootwait") == "PARTUUID=5eed0001-02"
    assert bd._kernel_cmdline_root("quiet") == ""


def test_human_sizes():
    assert bd.human(512) == "512 B"
    assert bd.human(3 << 20) == "3.0 MiB"
    assert bd.human(int(1.5 * (1 << 30))) == "1.5 GiB"


def test_inspect_refuses_missing_regular_and_character_devices(tmp_path):
    with pytest.raises(PibakeError, match="does not exist"):
        bd.inspect(str(tmp_path / "nvme9n9"))
    regular = tmp_path / "disk.img"
    regular.write_bytes(b"")
    with pytest.raises(PibakeError, match="regular file, not a block device"):
        bd.inspect(str(regular))
    with pytest.raises(PibakeError, match="not a block device"):
        bd.inspect("/dev/null")
    with pytest.raises(PibakeError, match="No device"):
        bd.inspect("")


def test_partition_is_not_a_whole_disk():
    with pytest.raises(PibakeError, match="partition 1 of /dev/sdx, not a whole disk; give the whole disk"):
        bd.require_whole_disk(record(path="/dev/sdx1", name="sdx1", partition_number=1, parent="sdx"))


def test_device_mapper_partition_is_not_a_whole_disk():
    with pytest.raises(PibakeError, match="one partition"):
        bd.require_whole_disk(record(name="dm-3", dm_uuid="part1-mpath-3600"))


def test_offset_loop_is_partition_like():
    loop = bd.LoopInfo("/tmp/disk.img", 4194304, 0)
    with pytest.raises(PibakeError, match="only part of /tmp/disk.img"):
        bd.require_whole_disk(record(name="loop5", loop=loop))
    bd.require_whole_disk(record(name="loop5", loop=bd.LoopInfo("/tmp/disk.img", 0, 0)))


def test_empty_and_read_only_devices_are_refused():
    with pytest.raises(PibakeError, match="no medium"):
        bd.require_whole_disk(record(size=0))
    with pytest.raises(PibakeError, match="read-only"):
        bd.require_whole_disk(record(read_only=True))


def test_place_label_sources():
    probe = bd.Probe({"TYPE": "ext4", "LABEL": "OURBOX_DATA"})
    assert bd.Place(1, 0, 1, probe, None).has_label("OURBOX_DATA")
    assert bd.Place(1, 0, 1, bd.Probe(ambivalent=True), "OURBOX_DATA").has_label("OURBOX_DATA")
    part = bd.PartitionEntry(1, 0, 1, "", "OURBOX_DATA", "", "gpt")
    assert bd.Place(1, 0, 1, bd.Probe(), None, part).has_label("OURBOX_DATA")
    assert not bd.Place(1, 0, 1, bd.Probe({"LABEL": "rootfs"}), "rootfs").has_label("OURBOX_DATA")


def test_ext_label_reads_the_superblock(tmp_path):
    image = tmp_path / "fs"
    block = bytearray(4096)
    block[1024 + 56:1024 + 58] = (0xEF53).to_bytes(2, "little")
    block[1024 + 120:1024 + 131] = b"OURBOX_DATA"
    image.write_bytes(bytes(8192) + bytes(block))
    assert bd.ext_label(str(image), 8192) == "OURBOX_DATA"
    assert bd.ext_label(str(image), 0) is None


def test_root_disk_of_this_machine_is_found():
    st = os.stat("/")
    name = bd.name_for_devno(os.major(st.st_dev), os.minor(st.st_dev))
    if not name:
        pytest.skip("the root filesystem is not on a block device here (overlay, tmpfs...)")
    disks = bd.root_disks()
    assert disks and disks <= set(os.listdir("/sys/block")) | {name}
    assert bd.whole_disks(name) <= disks
