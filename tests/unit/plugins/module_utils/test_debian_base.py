# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The Debian base recipe, identifiers, layout, mmdebstrap command and image assembly (on a tiny tree)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _debian_base as db
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def test_recipe_defaults_and_digest_is_stable():
    recipe = db.recipe_from_spec({"type": "debian"})
    assert recipe.release == "trixie" and recipe.mirror == "http://deb.debian.org/debian"
    assert recipe.components == ("main", "non-free-firmware")
    for needed in ("python3", "raspi-firmware", "linux-image-arm64", "initramfs-tools", "systemd", "udev", "kmod",
                   "sudo", "ca-certificates", "iproute2", "zstd", "fdisk", "e2fsprogs"):
        assert needed in recipe.packages
    assert recipe.digest() == db.recipe_from_spec({}).digest()
    assert recipe.digest() == db.recipe_from_spec({"mirror": "http://deb.debian.org/debian/"}).digest()
    assert re.match(r"^debian-trixie-arm64-[0-9a-f]{16}$", recipe.cache_key())


@pytest.mark.parametrize(
    "change",
    [{"release": "bookworm"}, {"mirror": "http://127.0.0.1/debian"}, {"extra_packages": ["openssh-server"]},
     {"boot_size_mib": 256}, {"root_free_mib": 100}, {"hostname": "box"}],
)
def test_every_recipe_input_changes_the_digest(change):
    assert db.recipe_from_spec(change).digest() != db.recipe_from_spec({}).digest()


def test_code_version_is_part_of_the_digest():
    recipe = db.recipe_from_spec({})
    bumped = db.Recipe(**{**recipe.__dict__, "version": recipe.version + 1})
    assert bumped.digest() != recipe.digest()


def test_extra_packages_order_does_not_matter():
    a = db.recipe_from_spec({"extra_packages": ["vim", "less"]})
    b = db.recipe_from_spec({"extra_packages": ["less", "vim", "less"]})
    assert a.digest() == b.digest()


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"release": "sid"}, "not supported"),
        ({"mirror": "deb.debian.org"}, "is not a URL"),
        ({"extra_packages": "vim"}, "must be a list"),
        ({"extra_packages": ["Bad Name"]}, "not a Debian package name"),
        ({"boot_size_mib": 10}, "from 64 to 4096"),
        ({"boot_size_mib": "big"}, "whole number"),
        ({"root_free_mib": True}, "whole number"),
        ({"hostname": "Bad_Host"}, "not a valid host name"),
        ({"colour": "red"}, "unknown key"),
    ],
)
def test_recipe_validation(spec, message):
    with pytest.raises(PibakeError, match=message):
        db.recipe_from_spec(spec)


def test_identifiers_are_deterministic_and_well_formed():
    digest = db.recipe_from_spec({}).digest()
    ids = db.identifiers(digest)
    assert ids == db.identifiers(digest)
    assert ids != db.identifiers(db.recipe_from_spec({"release": "bookworm"}).digest())
    assert re.match(r"^[0-9a-f]{8}$", ids.disk_id) and int(ids.disk_id, 16)
    assert re.match(r"^[0-9a-f]{8}$", ids.fat_serial)
    assert re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", ids.root_uuid)
    assert ids.root_partuuid == ids.disk_id + "-02" and ids.boot_partuuid == ids.disk_id + "-01"


def test_layout_is_aligned_like_raspberry_pi_os():
    layout = db.plan_layout(512, 1501)
    assert layout.boot_start == 8 * 2048  # 8 MiB
    assert layout.boot_sectors == 512 * 2048
    assert layout.root_start == 520 * 2048
    assert layout.root_sectors == 1504 * 2048  # rounded up to 4 MiB
    assert layout.total_bytes == (520 + 1504) << 20
    odd = db.plan_layout(66, 10)
    assert odd.root_start % (4 * 2048) == 0 and odd.root_start >= odd.boot_start + odd.boot_sectors


def test_sfdisk_script():
    script = db.sfdisk_script(db.plan_layout(512, 1000), "0a1b2c3d")
    assert "label: dos\n" in script and "label-id: 0x0a1b2c3d\n" in script
    assert "start=16384, size=1048576, type=c\n" in script
    assert "start=1064960, size=2048000, type=83\n" in script


def test_root_size_leaves_room():
    size = db.root_size_mib(1200 << 20, 40000, 512)
    assert 1200 + 64 + 512 < size < 1200 * 1.25 + 64 + 512 + 8
    assert size % 4 == 0


def test_overlay_boots_by_partuuid_and_arms_the_expansion(tmp_path):
    recipe = db.recipe_from_spec({"hostname": "box"})
    ids = db.identifiers(recipe.digest())
    db.write_overlay(str(tmp_path), recipe, ids)
    fstab = (tmp_path / "etc/fstab").read_text()
    assert f"PARTUUID={ids.root_partuuid}\t/\text4" in fstab
    assert f"PARTUUID={ids.boot_partuuid}\t/boot/firmware\tvfat" in fstab
    raspi = (tmp_path / "etc/default/raspi-firmware.pibake").read_text()
    assert f'ROOTPART="PARTUUID={ids.root_partuuid} rootfstype=ext4"' in raspi
    assert "ttyAMA0" in raspi
    assert (tmp_path / "etc/hostname").read_text() == "box\n"
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/pibake-expand-rootfs.service"
    assert os.readlink(link) == "/etc/systemd/system/pibake-expand-rootfs.service"
    script = tmp_path / "usr/local/sbin/pibake-expand-rootfs"
    assert os.stat(script).st_mode & 0o777 == 0o755
    subprocess.run(["sh", "-n", str(script)], check=True)
    conf = (tmp_path / "etc/initramfs-tools/conf.d/pibake.conf").read_text()
    assert "COMPRESS=zstd" in conf and "FSTYPE=ext4" in conf


def test_mmdebstrap_command_avoids_the_emulation_traps(tmp_path):
    recipe = db.recipe_from_spec({})
    ids = db.identifiers(recipe.digest())
    argv = db.mmdebstrap_argv(recipe, "/x/root", "/x/overlay", ids)
    assert argv[:3] == ["mmdebstrap", "--mode=root", "--arch=arm64"]
    assert "--components=main non-free-firmware" in argv
    assert "--hook-dir=/usr/share/mmdebstrap/hooks/eatmydata" in argv
    assert argv[-3:] == ["trixie", "/x/root", "http://deb.debian.org/debian"]
    include = next(a for a in argv if a.startswith("--include="))
    assert "man-db" not in include
    essential = next(a for a in argv if a.startswith("--essential-hook="))
    assert "dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs" in essential
    hooks = [a for a in argv if a.startswith("--customize-hook=")]
    assert "--remove /usr/sbin/update-initramfs" in hooks[0]
    assert "update-initramfs -c -k all" in hooks[1]
    assert f"root=PARTUUID={ids.root_partuuid} " in hooks[1]
    # the undivert must come before the single initramfs run
    assert hooks[0].index("--remove") >= 0 and "update-initramfs -c" not in hooks[0]


def test_check_binfmt(tmp_path):
    entry = tmp_path / "qemu-aarch64"
    entry.write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n")
    db.check_binfmt(str(entry))
    entry.write_text("disabled\n")
    with pytest.raises(PibakeError, match="binfmt is not active.*update-binfmts --enable qemu-aarch64"):
        db.check_binfmt(str(entry))
    with pytest.raises(PibakeError, match="missing"):
        db.check_binfmt(str(tmp_path / "absent"))


def test_remove_tree_refuses_when_something_is_mounted_below(monkeypatch, tmp_path):
    (tmp_path / "root" / "proc").mkdir(parents=True)
    monkeypatch.setattr(db, "mounts_below", lambda path: [str(tmp_path / "root" / "proc")])
    with pytest.raises(PibakeError, match="still has mounts"):
        db.remove_tree(str(tmp_path / "root"))
    assert (tmp_path / "root" / "proc").exists()


TOOLS = ("sfdisk", "mkfs.fat", "mcopy", "mkfs.ext4", "debugfs", "e2fsck", "fsck.fat", "mdir", "mtype", "minfo")


def _debugfs(image: str, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, image], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS) or os.geteuid() != 0,
                    reason="needs root and sfdisk, dosfstools, mtools, e2fsprogs")
def test_assemble_image_without_loop_devices_keeps_metadata(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "boot/firmware").mkdir(parents=True)
    (root / "dev").mkdir()
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc/hostname").write_text("box\n")
    (root / "etc/shadow").write_text("root:*:1::::::\n")
    os.chown(root / "etc/shadow", 0, 42)
    os.chmod(root / "etc/shadow", 0o640)
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + os.urandom(5000))
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool-hardlink")
    os.symlink("/etc/hostname", root / "etc/link")
    os.mknod(root / "dev/null", 0o666 | 0o020000, os.makedev(1, 3))
    os.mkfifo(root / "dev/fifo")
    os.chown(root / "usr/bin", 1000, 1000)
    capable = root / "usr/bin/ping"
    capable.write_bytes(b"ping")
    # cap_net_raw+ep, as setcap writes it (VFS_CAP_REVISION_2)
    os.setxattr(capable, "security.capability",
                bytes.fromhex("0100000200200000000000000000000000000000"))
    boot = tmp_path / "bootfs"
    (boot / "overlays").mkdir(parents=True)
    (boot / "config.txt").write_text("arm_64bit=1\n")
    (boot / "cmdline.txt").write_text("console=ttyAMA0,115200 root=PARTUUID=0a1b2c3d-02 rootfstype=ext4 rootwait\n")
    (boot / "overlays/README").write_text("x" * 3000)
    ids = db.Identifiers("0a1b2c3d", "1234abcd", "2f0b7a1e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                         "3a0b7a1e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
    image = str(tmp_path / "disk.img")
    layout = db.assemble_image(str(root), str(boot), image, ids, boot_size_mib=64, root_free_mib=16)

    table = json.loads(subprocess.run(["sfdisk", "--json", image], capture_output=True, check=True).stdout)
    table = table["partitiontable"]
    assert table["label"] == "dos" and table["id"] == "0x0a1b2c3d"
    assert [p["type"] for p in table["partitions"]] == ["c", "83"]
    assert table["partitions"][0]["start"] == layout.boot_start == 16384
    assert table["partitions"][1]["start"] == layout.root_start
    assert os.path.getsize(image) == layout.total_bytes

    fat = str(tmp_path / "fat.bin")
    subprocess.run(["dd", f"if={image}", f"of={fat}", "bs=1M", "skip=8", f"count={64}", "status=none"], check=True)
    subprocess.run(["fsck.fat", "-n", fat], check=True, capture_output=True)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    info = subprocess.run(["minfo", "-i", f"{image}@@{8 << 20}", "::"], capture_output=True, text=True, env=env,
                          check=True).stdout
    assert 'disk label="bootfs' in info and "serial number: 1234ABCD" in info and "hidden sectors: 16384" in info
    cmdline = subprocess.run(["mtype", "-i", f"{image}@@{8 << 20}", "::cmdline.txt"], capture_output=True,
                             text=True, env=env, check=True).stdout
    assert "root=PARTUUID=0a1b2c3d-02" in cmdline
    listing = subprocess.run(["mdir", "-i", f"{image}@@{8 << 20}", "-b", "-/", "::"], capture_output=True, text=True,
                             env=env, check=True).stdout
    assert "overlays/README" in listing

    ext = str(tmp_path / "root.bin")
    subprocess.run(["dd", f"if={image}", f"of={ext}", "bs=1M", f"skip={layout.root_start // 2048}", "status=none",
                    "conv=sparse"], check=True)
    subprocess.run(["e2fsck", "-fn", ext], check=True, capture_output=True)
    header = subprocess.run(["dumpe2fs", "-h", ext], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Filesystem volume name:\s+rootfs", header)
    assert re.search(r"Filesystem UUID:\s+2f0b7a1e-1c2d-4e5f-8a9b-0c1d2e3f4a5b", header)
    shadow = _debugfs(ext, "stat /etc/shadow")
    assert re.search(r"User:\s+0\s+Group:\s+42", shadow) and "Mode:  0640" in shadow
    tool = _debugfs(ext, "stat /usr/bin/tool")
    assert "Mode:  04755" in tool and re.search(r"Links:\s+2", tool)
    inode_a = _debugfs(ext, "stat /usr/bin/tool").split("Inode:")[1].split()[0]
    inode_b = _debugfs(ext, "stat /usr/bin/tool-hardlink").split("Inode:")[1].split()[0]
    assert inode_a == inode_b
    assert "Type: symlink" in _debugfs(ext, "stat /etc/link")
    null = _debugfs(ext, "stat /dev/null")
    assert "Type: character special" in null and re.search(r"major/minor number:\s+0?1:0?3", null)
    assert "Type: FIFO" in _debugfs(ext, "stat /dev/fifo")
    assert re.search(r"User:\s+1000\s+Group:\s+1000", _debugfs(ext, "stat /usr/bin"))
    assert "security.capability" in _debugfs(ext, "ea_list /usr/bin/ping")
    # /boot/firmware stays as an empty mount point in the root filesystem
    assert "Type: directory" in _debugfs(ext, "stat /boot/firmware")
