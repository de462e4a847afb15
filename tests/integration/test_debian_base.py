# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The default Debian trixie base image: built (or reused from the cache) and checked like a Raspberry Pi OS image.

Uses the real cache (``$PIBAKE_CACHE_DIR`` or ``~/.cache/pibake``) so a base built once serves later runs and the
end-to-end build. A cold build takes tens of minutes under qemu-user; a cached run takes seconds.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _base_image, _debian_base
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress

pytestmark = pytest.mark.integration

SECTOR = 512
BOOT_TIMEOUT = int(os.environ.get("PIBAKE_BOOT_TIMEOUT", "300"))  # seconds; TCG on a loaded host needs more


def _env():
    return dict(os.environ, MTOOLS_SKIP_CHECK="1", LC_ALL="C")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("building the Debian base needs root")
    log = tmp_path_factory.mktemp("progress") / "base.log"
    with Progress(str(log)) as progress:
        result = _base_image.resolve({"type": "debian", "release": "trixie"}, None, progress)
    print(f"base image {result['path']} built={result['built']} timings={result['timings']}")
    return result


@pytest.fixture(scope="module")
def table(base):
    out = subprocess.run(["sfdisk", "--json", base["path"]], capture_output=True, check=True).stdout
    return json.loads(out)["partitiontable"]


@pytest.fixture(scope="module")
def regions(base, table, tmp_path_factory):
    """The two partitions copied out of the image (sparse), so fsck tools can read them without loop devices."""
    folder = tmp_path_factory.mktemp("regions")
    paths = {}
    for name, part in zip(("boot", "root"), table["partitions"]):
        path = str(folder / f"{name}.bin")
        subprocess.run(["dd", f"if={base['path']}", f"of={path}", "bs=1M", f"skip={part['start'] * SECTOR}",
                        f"count={part['size'] * SECTOR}", "iflag=skip_bytes,count_bytes", "conv=sparse",
                        "status=none"], check=True)
        paths[name] = path
    yield paths
    shutil.rmtree(folder, ignore_errors=True)


def _cpio_names(data: bytes) -> set:
    """File names in a sequence of newc cpio archives."""
    names, pos = set(), 0
    while pos + 110 <= len(data):
        if data[pos:pos + 6] != b"070701":
            nxt = data.find(b"070701", pos)  # padding between concatenated archives
            if nxt < 0:
                break
            pos = nxt
            continue
        size, namesize = int(data[pos + 54:pos + 62], 16), int(data[pos + 94:pos + 102], 16)
        name = data[pos + 110:pos + 110 + namesize - 1].decode(errors="replace")
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + size + 3) & ~3
        if name != "TRAILER!!!":
            names.add(name)
    return names


def _mtype(image: str, offset: int, name: str) -> str:
    return subprocess.run(["mtype", "-i", f"{image}@@{offset}", f"::{name}"], capture_output=True, text=True,
                          env=_env(), check=True).stdout


def _debugfs(image: str, command: str) -> str:
    return subprocess.run(["debugfs", "-R", command, image], capture_output=True, text=True, check=True).stdout


def test_result_fields(base):
    assert base["path"].endswith(".img") and os.path.isfile(base["path"])
    assert re.match(r"^[0-9a-f]{64}$", base["sha256"])
    assert base["release"] == "trixie" and base["source"].startswith("debian trixie arm64")
    assert "/base/debian-trixie-arm64-" in base["path"]


def test_partition_table_is_raspberry_pi_os_like(base, table):
    recipe = _debian_base.recipe_from_spec({"type": "debian", "release": "trixie"})
    ids = _debian_base.identifiers(recipe.digest())
    assert table["label"] == "dos" and table["id"] == f"0x{ids.disk_id}"
    boot, root = table["partitions"]
    assert boot["type"] == "c" and boot["start"] == 8 * 2048 and boot["size"] == 512 * 2048
    assert root["type"] == "83" and root["start"] >= boot["start"] + boot["size"]
    assert os.path.getsize(base["path"]) == (root["start"] + root["size"]) * SECTOR


def test_boot_partition_checks_clean_and_holds_the_boot_files(base, table, regions):
    subprocess.run(["fsck.fat", "-n", regions["boot"]], check=True, capture_output=True)
    offset = table["partitions"][0]["start"] * SECTOR
    info = subprocess.run(["minfo", "-i", f"{base['path']}@@{offset}", "::"], capture_output=True, text=True,
                          env=_env(), check=True).stdout
    assert 'disk label="bootfs' in info
    listing = subprocess.run(["mdir", "-i", f"{base['path']}@@{offset}", "-b", "::"], capture_output=True,
                             text=True, env=_env(), check=True).stdout
    names = {os.path.basename(line.strip()) for line in listing.splitlines()}
    for needed in ("config.txt", "cmdline.txt", "start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb"):
        assert needed in names, needed
    config = _mtype(base["path"], offset, "config.txt")
    assert "arm_64bit=1" in config
    kernel = re.search(r"^kernel=(\S+)", config, re.M).group(1)
    initrd = re.search(r"^initramfs (\S+)", config, re.M).group(1)
    assert kernel in names and initrd in names
    data = subprocess.run(["mtype", "-i", f"{base['path']}@@{offset}", f"::{initrd}"], capture_output=True,
                          env=_env(), check=True).stdout
    # initramfs-tools puts the already-compressed .ko.xz modules in a leading plain cpio, the rest in zstd
    assert data[:6] == b"070701" or data[:4] == b"\x28\xb5\x2f\xfd"
    assert b"\x28\xb5\x2f\xfd" in data, "initramfs has no zstd part (COMPRESS=zstd not applied)"
    names = _cpio_names(data[:data.index(b"\x28\xb5\x2f\xfd")])
    names |= _cpio_names(subprocess.run(["zstd", "-dc"], input=data[data.index(b"\x28\xb5\x2f\xfd"):],
                                        capture_output=True, check=True).stdout)
    assert any(n.endswith("sbin/fsck") for n in names), "the initramfs cannot check the root filesystem"
    assert any(n.endswith("sbin/fsck.ext4") for n in names)
    assert any("/virtio_blk.ko" in n for n in names)  # QEMU -M virt disk
    assert any("/sdhci-iproc.ko" in n for n in names)  # Raspberry Pi 4 SD card controller


def test_cmdline_root_matches_partition_table(base, table):
    offset = table["partitions"][0]["start"] * SECTOR
    cmdline = _mtype(base["path"], offset, "cmdline.txt").strip()
    assert "\n" not in cmdline
    root = re.search(r"\broot=PARTUUID=([0-9a-f]{8})-(\d{2})\b", cmdline)
    assert root, cmdline
    assert f"0x{root.group(1)}" == table["id"] and int(root.group(2)) == 2
    assert "rootfstype=ext4" in cmdline and "rootwait" in cmdline
    assert "console=ttyAMA0,115200" in cmdline


def test_root_filesystem_checks_clean_and_is_configured(base, table, regions):
    subprocess.run(["e2fsck", "-fn", regions["root"]], check=True, capture_output=True)
    header = subprocess.run(["dumpe2fs", "-h", regions["root"]], capture_output=True, text=True, check=True).stdout
    assert re.search(r"Filesystem volume name:\s+rootfs$", header, re.M)
    disk = table["id"][2:]
    fstab = _debugfs(regions["root"], "cat /etc/fstab")
    assert re.search(rf"^PARTUUID={disk}-02\s+/\s+ext4", fstab, re.M)
    assert re.search(rf"^PARTUUID={disk}-01\s+/boot/firmware\s+vfat", fstab, re.M)
    assert f'ROOTPART="PARTUUID={disk}-02 rootfstype=ext4"' in _debugfs(regions["root"], "cat /etc/default/raspi-firmware")
    assert "Type: regular" in _debugfs(regions["root"], "stat /usr/bin/python3.13")
    assert "Type: symlink" in _debugfs(regions["root"], "stat /etc/systemd/system/multi-user.target.wants/pibake-expand-rootfs.service")
    for tool in ("/usr/sbin/sfdisk", "/usr/sbin/resize2fs", "/usr/bin/sudo", "/usr/sbin/update-initramfs"):
        assert "Type: regular" in _debugfs(regions["root"], f"stat {tool}"), tool
    sudo = _debugfs(regions["root"], "stat /usr/bin/sudo")
    assert "Mode:  04755" in sudo and re.search(r"User:\s+0\s+Group:\s+0", sudo)
    assert "Type: directory" in _debugfs(regions["root"], "stat /boot/firmware")
    entries = re.findall(r"\(\d+\)\s+(\S+)", _debugfs(regions["root"], "ls /boot/firmware"))
    assert set(entries) <= {".", ".."}, entries  # an empty mount point: the boot files live in the FAT
    assert _debugfs(regions["root"], "cat /etc/machine-id").strip() == ""
    assert "not found" in subprocess.run(["debugfs", "-R", "stat /etc/resolv.conf", regions["root"]],
                                         capture_output=True, text=True).stderr
    diversions = _debugfs(regions["root"], "cat /var/lib/dpkg/diversions")
    assert "update-initramfs" not in diversions and "/usr/bin/dpkg" not in diversions


def test_second_resolve_reuses_the_cache(base):
    started = time.monotonic()
    again = _base_image.resolve({"type": "debian", "release": "trixie"}, None, Progress(os.devnull))
    took = time.monotonic() - started
    assert again["built"] is False and again["path"] == base["path"] and again["sha256"] == base["sha256"]
    assert took < 5, took


def _boot_files(image: str, offset: int, folder: str):
    config = _mtype(image, offset, "config.txt")
    kernel = re.search(r"^kernel=(\S+)", config, re.M).group(1)
    initrd = re.search(r"^initramfs (\S+)", config, re.M).group(1)
    for name in (kernel, initrd):
        subprocess.run(["mcopy", "-n", "-i", f"{image}@@{offset}", f"::{name}", os.path.join(folder, name)],
                       env=_env(), check=True)
    cmdline = _mtype(image, offset, "cmdline.txt").strip()
    return os.path.join(folder, kernel), os.path.join(folder, initrd), cmdline


@pytest.mark.boot
def test_boots_to_a_login_prompt_in_qemu_and_grows_the_root(base, table, tmp_path):
    if shutil.which("qemu-system-aarch64") is None:
        pytest.skip("qemu-system-aarch64 not installed")
    disk = str(tmp_path / "disk.img")
    subprocess.run(["cp", "--sparse=always", base["path"], disk], check=True)
    os.truncate(disk, os.path.getsize(disk) + (1 << 30))  # room for the first-boot expansion
    kernel, initrd, cmdline = _boot_files(disk, table["partitions"][0]["start"] * SECTOR, str(tmp_path))
    # QEMU -M virt's UART is ttyAMA0. Under TCG on a busy host udev may need longer than systemd's 90 s default
    # to announce devices, which would send the boot to emergency mode; give it the whole test budget.
    cmdline = (re.sub(r"\bconsole=\S+", "", cmdline)
               + f" console=ttyAMA0,115200 systemd.default_device_timeout_sec={BOOT_TIMEOUT}")
    serial = tmp_path / "serial.log"
    argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "cortex-a72", "-smp", "2", "-m", "2048", "-nographic",
            "-kernel", kernel, "-initrd", initrd, "-append", cmdline,
            "-drive", f"file={disk},format=raw,if=none,id=hd0", "-device", "virtio-blk-pci,drive=hd0",
            "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
            "-serial", f"file:{serial}", "-monitor", "none", "-display", "none"]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        login_at = None
        while time.monotonic() - started < BOOT_TIMEOUT:
            text = serial.read_text(errors="replace") if serial.exists() else ""
            if re.search(r"login: *$", text, re.M):
                login_at = time.monotonic() - started
                break
            if proc.poll() is not None:
                break
            time.sleep(2)
        text = serial.read_text(errors="replace") if serial.exists() else ""
        print(f"login prompt after {login_at} s")
        assert login_at is not None, f"no login prompt in {BOOT_TIMEOUT} s; serial log tail:\n{text[-3000:]}"
        assert re.search(r"pibake-expand-rootfs: grew /dev/vda2", text), text[-3000:]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
