# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
import gzip
import lzma
import stat

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _qemu_kernel as qk
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

DEBIAN_CONFIG = """# Do not modify this file!
[pi4]
# Enable 64-bit mode (AArch64)
arm_64bit=1
[pi02]
kernel=wrong-for-a-pi-zero
[all]
enable_uart=1
upstream_kernel=1

kernel=vmlinuz-6.12.57+deb13-arm64
# For details on the initramfs directive, see
initramfs initrd.img-6.12.57+deb13-arm64 followkernel
"""


def test_config_txt_names_the_debian_kernel_and_initrd():
    assert qk.parse_config_txt(DEBIAN_CONFIG) == ("vmlinuz-6.12.57+deb13-arm64", "initrd.img-6.12.57+deb13-arm64")


def test_config_txt_without_kernel_line_means_kernel8():
    assert qk.parse_config_txt("[all]\narm_64bit=1\n") == ("kernel8.img", "")


def test_later_kernel_lines_win_and_comments_are_ignored():
    text = "kernel=a\n[pi5]\nkernel=b # the Pi 5 one\n[cm4]\nkernel=c\n"
    assert qk.parse_config_txt(text) == ("c", "")


@pytest.mark.parametrize("name, version", [
    ("vmlinuz-6.12.57+deb13-arm64", "6.12.57+deb13-arm64"),
    ("kernel8.img", ""),
    ("kernel_2712.img", ""),
    ("Image-6.1.0", "6.1.0"),
])
def test_kernel_version_from_the_file_name(name, version):
    assert qk.kernel_version(name) == version


def test_a_kernel_is_generic_when_virtio_pci_and_the_pci_host_are_built_in():
    builtin = b"kernel/drivers/virtio/virtio_pci.ko\nkernel/drivers/pci/controller/pci-host-generic.ko\n"
    assert qk.is_generic(builtin)
    assert not qk.is_generic(b"kernel/drivers/virtio/virtio_pci.ko\n")
    assert not qk.is_generic(None)


def _module(name: str, depends: str) -> bytes:
    return b"\x7fELF....\x00license=GPL\x00depends=" + depends.encode() + b"\x00name=" + name.encode() + b"\x00"


def test_modinfo_fields_are_read_from_the_module_bytes():
    assert qk.modinfo_field(_module("ext4", "jbd2,mbcache"), "depends") == ["jbd2,mbcache"]
    assert qk.modinfo_field(_module("ext4", ""), "depends") == [""]


def test_load_order_puts_dependencies_first_and_skips_builtins():
    modules = {
        "ext4": _module("ext4", "jbd2,mbcache,crc16"),
        "jbd2": _module("jbd2", ""),
        "mbcache": _module("mbcache", ""),
        "crc16": _module("crc16", ""),
        "virtio_net": _module("virtio_net", "net_failover"),
        "net_failover": _module("net_failover", "failover"),
        "failover": _module("failover", ""),
    }
    order = qk.load_order(["virtio_net", "ext4"], modules, builtin=["crc16"])
    assert order == ["failover", "net_failover", "virtio_net", "jbd2", "mbcache", "ext4"]


def test_a_missing_module_is_a_clear_error():
    with pytest.raises(PibakeError, match="no module virtio_blk"):
        qk.load_order(["virtio-blk"], {}, builtin=[])


def test_compressed_modules_are_decompressed():
    data = b"\x7fELF module"
    assert qk._decompress_module("a.ko.xz", lzma.compress(data)) == data
    assert qk._decompress_module("a.ko.gz", gzip.compress(data)) == data
    assert qk._decompress_module("a.ko", data) == data


def _read_newc(archive: bytes):
    entries, at = {}, 0
    while True:
        header = archive[at:at + 110]
        assert header[:6] == b"070701"
        fields = [int(header[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = fields[11], fields[6]
        name = archive[at + 110:at + 110 + namesize - 1].decode()
        at += 110 + namesize
        at += (4 - at % 4) % 4
        data = archive[at:at + filesize]
        at += filesize
        at += (4 - at % 4) % 4
        if name == "TRAILER!!!":
            return entries
        entries[name] = (fields[1], data, (fields[9], fields[10]))


def test_initramfs_holds_init_busybox_console_and_modules_in_order():
    archive = gzip.decompress(qk.build_initramfs(b"BUSYBOX", {"jbd2": b"J", "ext4": b"E"}, ["jbd2", "ext4"]))
    entries = _read_newc(archive)
    mode, data, dummy_rdev = entries["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and data.startswith(b"#!/bin/busybox sh")
    assert entries["bin/busybox"][1] == b"BUSYBOX"
    mode, dummy_data, rdev = entries["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)
    assert entries["modules/load.order"][1] == b"jbd2.ko\next4.ko\n"
    assert entries["modules/ext4.ko"][1] == b"E"


def test_init_script_resolves_mbr_partuuids_from_the_disk_signature():
    # the init compares "<signature>-<nn>" built from od's 32-bit word at byte 440 with root=PARTUUID=
    assert "od -An -tx4 -j440 -N4" in qk.INIT_SCRIPT
    assert "printf '%s-%02d'" in qk.INIT_SCRIPT
    assert 'exec switch_root /root "$init"' in qk.INIT_SCRIPT


def test_unknown_kernel_choice_is_rejected():
    with pytest.raises(PibakeError, match="auto, image or debian"):
        qk.boot_files("x.img", 0, 0, "/tmp", kernel="raspi")
