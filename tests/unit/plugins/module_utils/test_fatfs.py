# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_fatfs: mtools access and free-cluster ranges read from the allocation table — no root, no vfat."""

import os
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _fatfs
from ansible_collections.pibake.image.plugins.module_utils._imagefile import allocated_bytes, punch_hole
from tests.support.finalize_images import boot_offset, image_copy


def test_files_and_identity(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    off = boot_offset(img)
    assert _fatfs.is_fat(img, off)
    assert _fatfs.read_file(img, off, "cmdline.txt").startswith(b"console=")
    assert _fatfs.read_file(img, off, "nope.txt") is None
    assert {"config.txt", "overlays/vc4-kms-v3d.dtbo", "vmlinuz"} <= set(_fatfs.list_files(img, off))
    assert _fatfs.volume_id(img, off) == "5EED-0001" and _fatfs.volume_label(img, off) == "BOOTFS"
    _fatfs.write_file(img, off, "cmdline.txt", b"root=LABEL=rootfs\n")
    assert _fatfs.read_file(img, off, "cmdline.txt") == b"root=LABEL=rootfs\n"


def test_punching_free_clusters_keeps_files_and_fsck_clean(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=4)
    off = boot_offset(img)
    before = {name: _fatfs.read_file(img, off, name) for name in ("vmlinuz", "initrd.img", "config.txt")}
    ranges = _fatfs.free_byte_ranges(img, off)
    total = sum(length for dummy_offset, length in ranges)
    assert total > 50 << 20          # 64 MiB partition, well under 1 MiB of files
    allocated = allocated_bytes(img)
    fd = os.open(img, os.O_RDWR)
    try:
        for start, length in ranges:
            punch_hole(fd, start, length)
    finally:
        os.close(fd)
    assert allocated_bytes(img) < allocated - (3 << 20)      # the deleted 4 MiB file's clusters are gone
    for name, data in before.items():
        assert _fatfs.read_file(img, off, name) == data
    part = tmp_path / "boot.part"
    subprocess.run(["dd", f"if={img}", f"of={part}", "bs=1M", f"skip={off >> 20}", "count=64", "status=none"],
                   check=True)
    assert subprocess.run(["fsck.fat", "-n", str(part)], capture_output=True, check=False).returncode == 0


@pytest.mark.parametrize("bits,size_kib", [(12, 4096), (16, 32768)])
def test_free_ranges_of_fat12_and_fat16(tmp_path, bits, size_kib):
    fs = tmp_path / f"fat{bits}.img"
    subprocess.run(["mkfs.fat", "-C", "-F", str(bits), str(fs), str(size_kib)], check=True, capture_output=True)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    keep, gone = tmp_path / "keep.bin", tmp_path / "gone.bin"
    keep.write_bytes(os.urandom(300 << 10))
    gone.write_bytes(os.urandom(700 << 10))
    for src in (gone, keep):
        subprocess.run(["mcopy", "-i", str(fs), str(src), "::"], check=True, env=env)
    subprocess.run(["mdel", "-i", str(fs), "::gone.bin"], check=True, env=env)
    ranges = _fatfs.free_byte_ranges(str(fs), 0)
    free = sum(length for dummy_offset, length in ranges)
    assert (300 << 10) < size_kib * 1024 - free < (300 << 10) + (128 << 10)   # all but keep.bin and metadata
    fd = os.open(fs, os.O_RDWR)
    try:
        for start, length in ranges:
            punch_hole(fd, start, length)
    finally:
        os.close(fd)
    assert _fatfs.read_file(str(fs), 0, "keep.bin") == keep.read_bytes()
    assert subprocess.run(["fsck.fat", "-n", str(fs)], capture_output=True, check=False).returncode == 0
