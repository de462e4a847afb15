# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_board_lint on test images: a good image passes; each broken variant fails with a sentence naming it."""

import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _board_lint, _ext4, _fatfs
from tests.support.finalize_images import boot_offset, image_copy, root_offset

SMALL = dict(data_mb=1, deleted_mb=0, fat_deleted_mb=0)


def _cmdline(img, text):
    _fatfs.write_file(img, boot_offset(img), "cmdline.txt", text.encode())


def test_good_images_pass(tmp_path):
    for ref in ("partuuid", "label"):
        img = image_copy(tmp_path, root_ref=ref, **SMALL)
        result = _board_lint.lint(img)
        assert result["ok"], result["problems"]
        assert _board_lint.summary(result["problems"]) == "Board lint passed."
    gpt = image_copy(tmp_path, name="gpt.img", label="gpt", **SMALL)
    assert _board_lint.lint(gpt)["ok"]


@pytest.mark.parametrize("root,needle", [
    ("PARTUUID=5eed1e55-03", "root=PARTUUID=5eed1e55-03 names no partition"),
    ("/dev/mmcblk0p2", "kernel device name"),
    ("PARTUUID=5eed1e55-01", "not the ext4 root"),
    ("LABEL=nothere", "names no partition"),
])
def test_cmdline_root_must_name_the_root_partition(tmp_path, root, needle):
    img = image_copy(tmp_path, **SMALL)
    _cmdline(img, f"console=tty1 root={root} rootwait\n")
    problems = _board_lint.lint(img)["problems"]
    assert len(problems) == 1 and needle in problems[0]


def test_missing_root_argument(tmp_path):
    img = image_copy(tmp_path, **SMALL)
    _cmdline(img, "console=tty1 rootwait\n")
    assert "no root= argument" in _board_lint.lint(img)["problems"][0]


def test_zero_disk_identifier(tmp_path):
    img = image_copy(tmp_path, **SMALL)
    subprocess.run(["sfdisk", "--disk-id", img, "0x00000000"], check=True, capture_output=True)
    problems = _board_lint.lint(img)["problems"]
    assert any("disk identifier" in p and "zero" in p for p in problems)


def test_config_txt_files_must_exist(tmp_path):
    img = image_copy(tmp_path, **SMALL)
    off = boot_offset(img)
    _fatfs.write_file(img, off, "config.txt",
                      b"kernel=vmlinuz\ninitramfs missing.img followkernel\n[pi5]\ndtoverlay=nope,param=1\n"
                      b"device_tree=bcm2712-rpi-5-b.dtb\ninclude extra.txt\n")
    problems = _board_lint.lint(img)["problems"]
    assert len(problems) == 3
    assert "includes extra.txt" in problems[0]
    assert "initramfs missing.img" in problems[1] and "overlays/nope.dtbo" in problems[2]
    summary = _board_lint.summary(problems)
    assert summary.startswith("Board lint failed: config.txt includes extra.txt") and "(and 2 more problems)" in summary


def test_default_kernel_and_dtbs_are_required_when_config_names_none(tmp_path):
    img = image_copy(tmp_path, **SMALL)
    _fatfs.write_file(img, boot_offset(img), "config.txt", b"arm_64bit=1\n")
    problems = _board_lint.lint(img, devices=["pi4-64bit"])["problems"]
    assert problems == [p for p in problems if "kernel8.img" in p]
    assert len(problems) == 1


def test_fstab_entries_must_resolve_unless_nofail(tmp_path):
    ok = image_copy(tmp_path, name="ok.img", fstab_extra="LABEL=OURBOX_DATA /var/lib/ourbox ext4 defaults,nofail 0 2\n"
                    "tmpfs /tmp tmpfs defaults 0 0\n", **SMALL)
    assert _board_lint.lint(ok)["ok"]
    bad = image_copy(tmp_path, name="bad.img", fstab_extra="UUID=0000-1111 /data vfat defaults 0 2\n", **SMALL)
    problems = _board_lint.lint(bad)["problems"]
    assert len(problems) == 1 and "/etc/fstab mounts UUID=0000-1111 on /data" in problems[0]


def test_fstab_uuid_of_the_fat_and_root_resolve(tmp_path):
    img = image_copy(tmp_path, **SMALL)
    off = root_offset(img)
    _ext4.write_file(img, off, "/etc/fstab", b"UUID=5EED-0001 /boot/firmware vfat defaults 0 2\n"
                     b"UUID=0b5e7e57-0000-4000-8000-000000000002 / ext4 defaults 0 1\n")
    assert _board_lint.lint(img)["ok"]
