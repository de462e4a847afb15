# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_expand: detecting and arming first-boot root expansion, offline on the image file."""

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _expand, _ext4, _fatfs
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._imagefile import read_table
from tests.support.finalize_images import boot_offset, image_copy, root_offset

SMALL = dict(data_mb=1, deleted_mb=0, fat_deleted_mb=0)
DEBIAN_BASE_UNIT = b"""[Unit]
ConditionPathExists=/usr/local/sbin/pibake-expand-rootfs
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pibake-expand-rootfs
[Install]
WantedBy=multi-user.target
"""


def test_systemd_unit_is_armed_through_its_condition_marker(tmp_path):
    img = image_copy(tmp_path, expansion="systemd", **SMALL)
    table, off = read_table(img), root_offset(img)
    assert _expand.detect(table, off) == "systemd" and _expand.is_armed(table, off) is None
    assert _expand.arm(table, off, check_mode=True)["actions"] and _expand.is_armed(table, off) is None
    result = _expand.arm(table, off)
    assert result == {"mechanism": "systemd", "changed": True,
                      "actions": ["pibake-grow-root.service: created /var/lib/pibake/grow-root"]}
    assert _expand.is_armed(table, off) == "systemd"
    assert _expand.arm(table, off)["changed"] is False            # idempotent
    assert _ext4.fsck(img, off, repair=False) == 0


def test_a_disabled_base_unit_is_enabled_again_and_done_stamps_removed(tmp_path):
    img = image_copy(tmp_path, expansion="none", **SMALL)
    table, off = read_table(img), root_offset(img)
    _ext4.write_file(img, off, "/usr/local/sbin/pibake-expand-rootfs", b"#!/bin/sh\nresize2fs /dev/x\n", 0o755)
    _ext4.write_file(img, off, "/etc/systemd/system/pibake-expand-rootfs.service", DEBIAN_BASE_UNIT)
    _ext4.write_file(img, off, "/var/lib/pibake/firstboot/steps/grow_rootfs.done", b"")
    result = _expand.arm(table, off, "auto")
    assert result["mechanism"] == "systemd"
    assert "enabled pibake-expand-rootfs.service (/etc/systemd/system/multi-user.target.wants/" \
           "pibake-expand-rootfs.service)" in result["actions"]
    assert not _ext4.exists(img, off, "/var/lib/pibake/firstboot/steps/grow_rootfs.done")
    assert _ext4.read_file(img, off, "/etc/systemd/system/multi-user.target.wants/pibake-expand-rootfs.service") \
        == DEBIAN_BASE_UNIT
    assert _expand.is_armed(table, off) == "systemd"


def test_missing_unit_script_is_an_error_not_an_empty_file(tmp_path):
    img = image_copy(tmp_path, expansion="none", **SMALL)
    table, off = read_table(img), root_offset(img)
    _ext4.write_file(img, off, "/etc/systemd/system/grow.service",
                     DEBIAN_BASE_UNIT.replace(b"ExecStart=", b"ExecStartPre=/sbin/resize2fs -P /\nExecStart="))
    with pytest.raises(PibakeError, match="needs /usr/local/sbin/pibake-expand-rootfs"):
        _expand.arm(table, off)
    assert not _ext4.exists(img, off, "/usr/local/sbin/pibake-expand-rootfs")


def test_raspios_gets_init_firstboot_and_resize2fs_once(tmp_path):
    img = image_copy(tmp_path, expansion="raspios", **SMALL)
    table, off = read_table(img), root_offset(img)
    assert _expand.detect(table, off) == "raspios" and _expand.is_armed(table, off) is None
    result = _expand.arm(table, off)
    assert result["actions"] == ["cmdline.txt: added init=/usr/lib/raspberrypi-sys-mods/firstboot",
                                 "linked /etc/rc3.d/S01resize2fs_once"]
    cmdline = _fatfs.read_file(img, boot_offset(img), "cmdline.txt").decode()
    assert cmdline.endswith(" init=/usr/lib/raspberrypi-sys-mods/firstboot\n") and "root=PARTUUID=" in cmdline
    assert _ext4.stat(img, off, "/etc/rc3.d/S01resize2fs_once")["target"] == "../init.d/resize2fs_once"
    assert _expand.is_armed(table, off) == "raspios"


def test_no_mechanism_fails_unless_none_is_chosen(tmp_path):
    img = image_copy(tmp_path, expansion="none", **SMALL)
    table, off = read_table(img), root_offset(img)
    with pytest.raises(PibakeError, match="no first-boot root expansion"):
        _expand.arm(table, off)
    assert _expand.arm(table, off, "none") == {"mechanism": "none", "changed": False, "actions": []}
    with pytest.raises(PibakeError, match="lacks /usr/lib/raspberrypi-sys-mods/firstboot"):
        _expand.arm(table, off, "raspios")
