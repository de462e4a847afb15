# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Preparing a test machine, without booting it: image copy, kernel choice, key injection, qemu command line."""

import io
import lzma
import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _qemu_boot as qb, _qemu_kernel as qk
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

VERSION = "6.12.0-test-arm64"
BOOT_START, BOOT_SECTORS, ROOT_SECTORS = 2048, 64 * 2048, 24 * 2048
ROOT_OFFSET = (BOOT_START + BOOT_SECTORS) * 512
BOOT_OFFSET = BOOT_START * 512
MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")

needs_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("mkfs.fat", "mcopy", "mkfs.ext4", "debugfs", "sfdisk", "ssh-keygen")),
    reason="needs dosfstools, mtools, e2fsprogs, fdisk, openssh-client")


def make_image(tmp_path, *, generic=True, sudo_user="cubeos", config=None):
    """A tiny Raspberry Pi-style image: FAT with config.txt/cmdline.txt/kernel/initrd, ext4 root with users."""
    root = tmp_path / "tree"
    (root / "etc" / "sudoers.d").mkdir(parents=True)
    (root / "home" / "cubeos").mkdir(parents=True)
    (root / "root").mkdir()
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n"
        "cubeos:x:1000:1000::/home/cubeos:/bin/bash\n")
    if sudo_user:
        (root / "etc" / "sudoers.d" / "010_pibake-admin").write_text(
            f"# Managed by pibake.image (role base)\n{sudo_user} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    modules = root / "usr" / "lib" / "modules" / VERSION
    modules.mkdir(parents=True)
    builtin = "kernel/drivers/virtio/virtio_pci.ko\n" + (
        "kernel/drivers/pci/controller/pci-host-generic.ko\n" if generic else "")
    (modules / "modules.builtin").write_text(builtin)
    os.symlink("usr/lib", root / "lib")
    image = tmp_path / "pi.img"
    with open(image, "wb") as handle:
        handle.truncate((BOOT_START + BOOT_SECTORS + ROOT_SECTORS) * 512)
    layout = (f"label: dos\nlabel-id: 0x1234abcd\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\n"
              f"start={BOOT_START + BOOT_SECTORS}, size={ROOT_SECTORS}, type=83\n")
    subprocess.run(["sfdisk", "-q", str(image)], input=layout.encode(), check=True)
    subprocess.run(["mkfs.fat", "-F", "32", "--offset", str(BOOT_START), "--mbr=n", str(image),
                    str(BOOT_SECTORS // 2)], check=True, capture_output=True)
    files = tmp_path / "fat"
    files.mkdir()
    (files / "config.txt").write_text(config if config is not None else
                                      f"[all]\nkernel=vmlinuz-{VERSION}\ninitramfs initrd.img-{VERSION} followkernel\n")
    (files / "cmdline.txt").write_text("console=serial0,115200 console=tty1 root=PARTUUID=1234abcd-02 rootwait\n")
    (files / f"vmlinuz-{VERSION}").write_bytes(b"KERNEL")
    (files / f"initrd.img-{VERSION}").write_bytes(b"INITRD")
    subprocess.run(["mcopy", "-i", f"{image}@@{BOOT_OFFSET}", *[str(p) for p in sorted(files.iterdir())], "::/"],
                   check=True, env=MTOOLS_ENV)
    part = tmp_path / "root.ext4"
    with open(part, "wb") as handle:
        handle.truncate(ROOT_SECTORS * 512)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(root), str(part)], check=True)
    subprocess.run(["dd", f"if={part}", f"of={image}", "bs=1M", f"seek={ROOT_OFFSET}", "oflag=seek_bytes",
                    "conv=notrunc,sparse", "status=none"], check=True)
    return str(image)


def test_cmdline_keeps_the_image_options_and_uses_the_qemu_serial_console():
    line = qb.build_cmdline("console=serial0,115200 console=tty1 root=PARTUUID=ab-02 rootwait quiet", "loglevel=4")
    assert line == "root=PARTUUID=ab-02 rootwait quiet console=ttyAMA0,115200 loglevel=4"


def test_cmdline_without_root_is_an_error():
    with pytest.raises(PibakeError, match="no root="):
        qb.build_cmdline("console=tty1 quiet")


def test_sparse_copy_leaves_holes_and_keeps_every_byte(tmp_path):
    data = os.urandom(4096) + bytes(1 << 20) + b"tail" + bytes(70000)
    dest = tmp_path / "out.img"
    assert qb.sparse_copy_stream(io.BytesIO(data), str(dest)) == len(data)
    assert dest.read_bytes() == data
    assert os.stat(dest).st_blocks * 512 < len(data) // 2


def test_compressed_images_are_decompressed_sparse(tmp_path):
    raw = os.urandom(1000) + bytes(2 << 20)
    src = tmp_path / "os.img.xz"
    src.write_bytes(lzma.compress(raw, format=lzma.FORMAT_XZ))
    dest = tmp_path / "copy.img"
    assert qb.copy_image(str(src), str(dest)) == "decompressed xz"
    assert dest.read_bytes() == raw


def test_a_corrupt_download_says_so(tmp_path):
    src = tmp_path / "os.img.xz"
    src.write_bytes(lzma.compress(os.urandom(5000))[:-40])
    with pytest.raises(PibakeError, match="Decompressing .* failed.*fetch the image again"):
        qb.copy_image(str(src), str(tmp_path / "copy.img"))


def test_a_missing_image_is_one_sentence(tmp_path):
    with pytest.raises(PibakeError, match="does not exist"):
        qb.copy_image(str(tmp_path / "nope.img"), str(tmp_path / "copy.img"))


@needs_tools
def test_the_image_kernel_is_used_when_it_is_generic(tmp_path):
    image = make_image(tmp_path)
    files, why = qk.image_boot_files(image, BOOT_OFFSET, ROOT_OFFSET, str(tmp_path / "boot"))
    assert why == "" and files.source == "image"
    assert open(files.kernel, "rb").read() == b"KERNEL" and open(files.initrd, "rb").read() == b"INITRD"
    assert "root=PARTUUID=1234abcd-02" in files.cmdline


@needs_tools
def test_a_kernel_without_virtio_pci_host_is_not_used(tmp_path):
    image = make_image(tmp_path, generic=False)
    files, why = qk.image_boot_files(image, BOOT_OFFSET, ROOT_OFFSET, str(tmp_path / "boot"))
    assert files is None and "not a generic arm64 kernel" in why


@needs_tools
def test_a_pi_kernel_name_is_not_used(tmp_path):
    image = make_image(tmp_path, config="[all]\narm_64bit=1\n")
    files, why = qk.image_boot_files(image, BOOT_OFFSET, ROOT_OFFSET, str(tmp_path / "boot"))
    assert files is None and "kernel8.img" in why
    with pytest.raises(PibakeError, match="kernel=auto or kernel=debian"):
        qk.boot_files(image, BOOT_OFFSET, ROOT_OFFSET, str(tmp_path / "boot"), kernel="image")


@needs_tools
def test_admin_user_comes_from_the_base_role_sudo_rule(tmp_path):
    assert qb.admin_user(make_image(tmp_path, sudo_user="cubeos"), ROOT_OFFSET) == "cubeos"


@needs_tools
def test_admin_user_falls_back_to_the_first_login_user(tmp_path):
    assert qb.admin_user(make_image(tmp_path, sudo_user=""), ROOT_OFFSET) == "cubeos"


@needs_tools
def test_the_key_is_written_owned_by_the_user_with_private_modes(tmp_path):
    image = make_image(tmp_path)
    user, path = qb.inject_ssh_key(image, ROOT_OFFSET, "auto", "ssh-ed25519 AAAAC3test test@host\n")
    assert (user, path) == ("cubeos", "/home/cubeos/.ssh/authorized_keys")
    assert _ext4.read_file(image, ROOT_OFFSET, path) == b"ssh-ed25519 AAAAC3test test@host\n"
    out = subprocess.run(["debugfs", "-R", f"stat {path}", f"{image}?offset={ROOT_OFFSET}"],
                         capture_output=True, check=True).stdout.decode()
    assert re.search(r"User:\s+1000\s+Group:\s+1000", out) and re.search(r"Mode:\s+0600", out)
    out = subprocess.run(["debugfs", "-R", "stat /home/cubeos/.ssh", f"{image}?offset={ROOT_OFFSET}"],
                         capture_output=True, check=True).stdout.decode()
    assert re.search(r"User:\s+1000", out) and re.search(r"Mode:\s+0700", out)
    # a second injection replaces the key instead of adding to it
    qb.inject_ssh_key(image, ROOT_OFFSET, "cubeos", "ssh-ed25519 AAAAC3other other@host")
    assert _ext4.read_file(image, ROOT_OFFSET, path) == b"ssh-ed25519 AAAAC3other other@host\n"


@needs_tools
def test_an_unknown_ssh_user_is_one_sentence(tmp_path):
    with pytest.raises(PibakeError, match="has no user ghost"):
        qb.inject_ssh_key(make_image(tmp_path), ROOT_OFFSET, "ghost", "ssh-ed25519 AAAA x")


@needs_tools
def test_prepare_builds_a_machine_and_destroy_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PIBAKE_VM_DIR", str(tmp_path / "vms"))
    image = make_image(tmp_path)
    before = open(image, "rb").read()
    vm = qb.prepare(image, work_root=str(tmp_path / "work"), owner_pid=os.getpid(), grow="8M", data_disk=True,
                    simulate_wifi=True)
    try:
        spec = vm.spec
        assert spec["kernel_source"] == "image" and spec["ssh_user"] == "cubeos"
        assert spec["disk_bytes"] == spec["image_bytes"] + (8 << 20)
        assert spec["cmdline"] == "root=PARTUUID=1234abcd-02 rootwait console=ttyAMA0,115200"
        assert _ext4.read_file(spec["disk"], ROOT_OFFSET, "/etc/modules-load.d/pibake-boot-test-wifi.conf")
        label = subprocess.run(["blkid", "-o", "value", "-s", "LABEL", spec["data_disk"]], capture_output=True,
                               check=True).stdout.decode().strip()
        assert label == "OURBOX_DATA"
        argv = vm.qemu_argv(2222)
        assert argv[:3] == ["qemu-system-aarch64", "-M", "virt"]
        assert "hostfwd=tcp:127.0.0.1:2222-:22" in " ".join(argv)
        assert any(a.startswith("if=none,id=data,") for a in argv)
        assert open(image, "rb").read() == before, "the source image was modified"
        assert os.path.exists(vm.record_path)
    finally:
        vm.destroy()
    assert not os.path.exists(vm.work) and not os.path.exists(vm.record_path)


@needs_tools
def test_a_failed_preparation_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PIBAKE_VM_DIR", str(tmp_path / "vms"))
    image = make_image(tmp_path)
    with pytest.raises(PibakeError, match="no user ghost"):
        qb.prepare(image, work_root=str(tmp_path / "work"), owner_pid=os.getpid(), ssh_user="ghost")
    assert os.listdir(tmp_path / "work") == []
    assert os.listdir(tmp_path / "vms") == []


def test_commas_in_paths_are_escaped_for_qemu():
    assert qb._qemu_path("/a,b/disk.img") == "/a,,b/disk.img"
