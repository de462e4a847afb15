# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Flash and prepare-data-disk on loop devices standing in for the SYSTEM and DATA NVMe.

Every loop device here is attached by this file (``losetup -f --show`` on a backing file in the test's own temp
folder) and detached in a finalizer; every mount is unmounted in ``finally``. The test images are built in a temp
folder without any loop: ``sfdisk`` for the table, ``mkfs.fat --offset`` and ``mkfs.ext4 -E offset=`` for the
filesystems, mtools for ``cmdline.txt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _blockdev as bd
from ansible_collections.pibake.image.plugins.module_utils import _data_disk, _flash
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from tests.support.fixtures import registry  # noqa: F401  (pytest fixture)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.flash,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"), reason="needs root and loop devices"),
]

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / ".venv" / "bin" / "ansible-playbook"
MIB = 1 << 20
SECTOR = 512
BOOT_START, BOOT_SECTORS = 8192, 16 * MIB // SECTOR  # FAT at 4 MiB, 16 MiB long
ROOT_START = BOOT_START + BOOT_SECTORS  # ext4 from 20 MiB to the end
IMAGE_SIZE = 64 * MIB
MBR_ID = "5eed0042"
GPT_ROOT_UUID = "3f1b8a62-6c1e-4f7a-9d55-7a0c1c1e0b02"
GPT_BOOT_UUID = "3f1b8a62-6c1e-4f7a-9d55-7a0c1c1e0b01"
MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


def sh(*argv, **kwargs):
    kwargs.setdefault("check", True)
    kwargs.setdefault("capture_output", True)
    return subprocess.run([str(a) for a in argv], **kwargs)


# ----------------------------------------------------------------------------------------------------------- images


def build_image(folder: Path, label: str = "dos") -> Path:
    """A Raspberry Pi-shaped image: FAT boot with cmdline.txt, ext4 root with /etc/fstab and 3 MiB of data."""
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / "os.img"
    with open(image, "wb") as handle:
        handle.truncate(IMAGE_SIZE)
    if label == "dos":
        table = (f"label: dos\nlabel-id: 0x{MBR_ID}\nstart={BOOT_START}, size={BOOT_SECTORS}, type=c\n"
                 f"start={ROOT_START}, type=83\n")
        boot_id, root_id = f"{MBR_ID}-01", f"{MBR_ID}-02"
    else:
        table = (f"label: gpt\nstart={BOOT_START}, size={BOOT_SECTORS}, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, "
                 f"uuid={GPT_BOOT_UUID}\nstart={ROOT_START}, size={(IMAGE_SIZE - 2 * MIB) // SECTOR - ROOT_START}, "
                 f"type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid={GPT_ROOT_UUID}\n")
        boot_id, root_id = GPT_BOOT_UUID, GPT_ROOT_UUID
    sh("sfdisk", "-q", image, input=table.encode())
    sh("mkfs.fat", "-F", "16", "-n", "BOOTFS", "--offset", BOOT_START, image, BOOT_SECTORS * SECTOR // 1024)
    cmdline = folder / "cmdline.txt"
    cmdline.write_text(f"console=serial0,115200 root=PARTUUID={root_id} rootfstype=ext4 fsck.repair=yes rootwait\n")
    sh("mcopy", "-i", f"{image}@@{BOOT_START * SECTOR}", cmdline, "::cmdline.txt", env=MTOOLS_ENV)
    tree = folder / "root"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "fstab").write_text(
        "proc /proc proc defaults 0 0\n"
        f"PARTUUID={boot_id} /boot/firmware vfat defaults 0 2\n"
        f"PARTUUID={root_id} / ext4 defaults,noatime 0 1\n"
        "LABEL=OURBOX_DATA /var/lib/ourbox ext4 defaults,noatime,nofail 0 2\n"
    )
    (tree / "data.bin").write_bytes(os.urandom(3 * MIB))
    root_bytes = (IMAGE_SIZE - (2 * MIB if label == "gpt" else 0)) - ROOT_START * SECTOR
    sh("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", tree, "-E", f"offset={ROOT_START * SECTOR}", image,
       f"{root_bytes // 1024}k")
    sh("bmaptool", "create", "-o", folder / "os.img.bmap", image)
    sh("xz", "-k", "-1", "-T1", "-f", image)
    sh("zstd", "-q", "-k", "-f", image)
    return image


@pytest.fixture(scope="module")
def mbr_image(tmp_path_factory):
    return build_image(tmp_path_factory.mktemp("flash-mbr"))


@pytest.fixture(scope="module")
def gpt_image(tmp_path_factory):
    return build_image(tmp_path_factory.mktemp("flash-gpt"), "gpt")


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha256_head(device: str, length: int) -> str:
    digest = hashlib.sha256()
    with open(device, "rb") as handle:
        remaining = length
        while remaining:
            block = handle.read(min(remaining, 4 * MIB))
            assert block, f"{device} ended early"
            digest.update(block)
            remaining -= len(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------------- loops


@pytest.fixture
def loops(tmp_path):
    """Factory: ``loops(size, fill=b"")`` attaches a fresh backing file; every loop is detached afterwards."""
    attached = []

    def attach(size: int, fill: bytes = b"", *extra: str, backing: Path = None) -> str:
        if backing is None:
            backing = tmp_path / f"disk{len(attached)}.bin"
            with open(backing, "wb") as handle:
                if fill:
                    block = (fill * (MIB // len(fill) + 1))[:MIB]
                    for _ in range(size // MIB):
                        handle.write(block)
                handle.truncate(size)
        dev = sh("losetup", "-f", "--show", *extra, backing, text=True).stdout.strip()
        attached.append(dev)
        return dev

    try:
        yield attach
    finally:
        for dev in reversed(attached):
            for attempt in range(10):
                if sh("losetup", "-d", dev, check=False).returncode == 0:
                    break
                time.sleep(0.2 * (attempt + 1))


@contextlib.contextmanager
def mounted(device: str, where: Path):
    where.mkdir(parents=True, exist_ok=True)
    sh("mount", device, where)
    try:
        yield where
    finally:
        sh("umount", where, check=False)


def refusal(device: str, image: Path = None) -> str:
    with pytest.raises(PibakeError) as caught:
        _flash.check_target(device, _flash.open_source(str(image)) if image else None)
    message = str(caught.value)
    assert message.endswith(".") and not re.search(r"[.;:] [A-Z][a-z]", message), message  # one sentence
    return message


# ----------------------------------------------------------------------------------------------------------- refusals


def test_refuses_a_disk_prepared_as_ourbox_data(loops, mbr_image):
    dev = loops(128 * MIB)
    _data_disk.prepare(dev)
    message = refusal(dev, mbr_image.with_suffix(".img.xz"))
    assert "OURBOX_DATA" in message and "partition 1" in message and "SYSTEM disk" in message
    with pytest.raises(PibakeError, match="OURBOX_DATA"):
        _flash.flash(str(mbr_image) + ".xz", dev, confirm=True)


def test_refuses_ourbox_data_on_the_whole_disk(loops):
    dev = loops(64 * MIB)
    sh("mkfs.ext4", "-q", "-L", "OURBOX_DATA", dev)
    assert "OURBOX_DATA filesystem (" + dev in refusal(dev)


def test_refuses_ourbox_data_on_a_later_partition(loops):
    """Partition 3 of an MBR disk, found through the table and probed by offset (the kernel made no node)."""
    dev = loops(96 * MIB)
    sh("sfdisk", "-q", "--no-reread", "--no-tell-kernel", dev,
       input=b"label: dos\nstart=2048, size=32768, type=c\nstart=34816, size=32768, type=83\nstart=67584, type=83\n")
    sh("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-E", f"offset={34816 * SECTOR}", dev, "16384k")
    sh("mkfs.ext4", "-q", "-F", "-L", "OURBOX_DATA", "-E", f"offset={67584 * SECTOR}", dev, f"{(96 * MIB - 67584 * SECTOR) // 1024}k")
    assert not os.path.exists(dev + "p3")
    assert "partition 3 of" in refusal(dev)


def test_refuses_any_filesystem_labelled_ourbox_data(loops):
    dev = loops(64 * MIB)
    sh("sfdisk", "-q", "--no-reread", "--no-tell-kernel", dev, input=b"label: dos\nstart=2048, type=c\n")
    sh("mkfs.fat", "-F", "32", "-n", "OURBOX_DATA", "--offset", 2048, dev, (64 * MIB - 2048 * SECTOR) // 1024)
    assert "OURBOX_DATA filesystem (partition 1 of" in refusal(dev)


def test_refuses_a_mounted_disk(loops, tmp_path):
    dev = loops(64 * MIB)
    sh("mkfs.ext4", "-q", "-L", "busy", dev)
    with mounted(dev, tmp_path / "mnt"):
        message = refusal(dev)
        assert "in use" in message and "mounted on" in message
        with pytest.raises(PibakeError, match="in use"):
            _data_disk.prepare(dev, force=True)
    refusal_after = _flash.check_target(dev)  # unmounted: no longer refused
    assert refusal_after.dev.node == dev


def test_refuses_a_disk_whose_partition_is_mounted_through_an_offset_loop(loops, tmp_path):
    dev = loops(64 * MIB)
    sh("sfdisk", "-q", "--no-reread", "--no-tell-kernel", dev, input=b"label: dos\nstart=2048, type=83\n")
    sh("mkfs.ext4", "-q", "-F", "-L", "part", "-E", f"offset={2048 * SECTOR}", dev, f"{(64 * MIB - 2048 * SECTOR) // 1024}k")
    part = loops(0, b"", "-o", str(2048 * SECTOR), backing=Path(dev))
    with mounted(part, tmp_path / "mnt"):
        message = refusal(dev)
        assert f"backs the loop device {part}" in message
    # The offset loop itself is a window onto one partition, not a whole disk.
    assert "only part of" in refusal(part)


def test_refuses_a_disk_smaller_than_the_image(loops, mbr_image):
    dev = loops(32 * MIB)
    message = refusal(dev, mbr_image.with_suffix(".img.xz"))
    assert "32.0 MiB" in message and "64.0 MiB" in message and "at least that large" in message


def test_refuses_what_is_not_a_whole_block_device(loops, tmp_path, mbr_image):
    assert "does not exist" in refusal(str(tmp_path / "nvme7n1"))
    assert "regular file" in refusal(str(mbr_image))
    assert "not a block device" in refusal("/dev/zero")
    backing = tmp_path / "window.bin"
    backing.write_bytes(bytes(64 * MIB))
    window = loops(0, b"", "-o", str(MIB), backing=backing)
    assert "only part of" in refusal(window)
    whole = loops(64 * MIB)
    stacked = loops(0, b"", backing=Path(whole))
    assert f"over the block device {whole}" in refusal(stacked)
    unattached = sh("losetup", "-f", text=True).stdout.strip()
    message = refusal(unattached)
    assert "no medium" in message or bd.inspect(unattached).size > 0  # unless another job took it meanwhile


def test_refuses_a_loop_over_the_image_itself(loops, mbr_image):
    dev = loops(0, b"", backing=mbr_image)
    assert "over the image" in refusal(dev, mbr_image)


def test_refuses_the_running_root_disk():
    st = os.stat("/")
    name = bd.name_for_devno(os.major(st.st_dev), os.minor(st.st_dev))
    if not name or not os.path.exists(f"/dev/{name}"):
        pytest.skip("the root filesystem is not on a block device here")
    disk = sorted(bd.whole_disks(name))[0]
    message = refusal(f"/dev/{disk}")
    assert "running root filesystem" in message or "in use" in message


# ----------------------------------------------------------------------------------------------------------- writing


def test_without_confirm_nothing_is_written(loops, mbr_image):
    dev = loops(96 * MIB)
    zeros = hashlib.sha256(bytes(IMAGE_SIZE)).hexdigest()
    result = _flash.flash(str(mbr_image) + ".xz", dev)
    assert result["flashed"] is False and result["changed"] is False
    assert "Nothing was written" in result["msg"] and "confirm=true" in result["msg"]
    result = _flash.flash(str(mbr_image) + ".xz", dev, confirm=True, check_mode=True)
    assert result["flashed"] is False and result["changed"] is True
    assert sha256_head(dev, IMAGE_SIZE) == zeros


def test_flash_xz_with_bmap_is_verified(loops, mbr_image):
    dev = loops(96 * MIB)
    result = _flash.flash(str(mbr_image) + ".xz", dev, confirm=True)
    assert result["bmap"] == str(mbr_image) + ".bmap"
    assert result["verified"] is True and result["compression"] == "xz"
    assert result["bytes_written"] == result["mapped_bytes"] < IMAGE_SIZE
    assert sha256_head(dev, IMAGE_SIZE) == sha256_file(mbr_image)
    sh("e2fsck", "-fn", f"{dev}?offset={ROOT_START * SECTOR}")


def test_flash_xz_without_bmap_overwrites_everything(loops, mbr_image):
    dev = loops(96 * MIB, b"\xa5\x5a")  # a used disk: without a bmap even the image's zeros must land
    result = _flash.flash(str(mbr_image) + ".xz", dev, confirm=True, use_bmap=False)
    assert result["bmap"] is None and result["bytes_written"] == IMAGE_SIZE and result["verified"]
    assert sha256_head(dev, IMAGE_SIZE) == sha256_file(mbr_image)


@pytest.mark.parametrize("suffix", ["", ".zst"])
def test_flash_raw_and_zstd(loops, mbr_image, suffix):
    dev = loops(64 * MIB)  # exactly the image size
    result = _flash.flash(str(mbr_image) + suffix, dev, confirm=True)
    assert result["verified"] and result["compression"] == ("zstd" if suffix else "none")
    assert sha256_head(dev, IMAGE_SIZE) == sha256_file(mbr_image)


def test_old_gpt_backup_header_does_not_survive(loops, mbr_image):
    dev = loops(128 * MIB)
    sh("sfdisk", "-q", "--no-reread", "--no-tell-kernel", dev, input=b"label: gpt\nstart=2048, type=L, name=old\n")
    assert bd.probe(dev).pttype == "gpt"
    result = _flash.flash(str(mbr_image) + ".xz", dev, confirm=True)
    assert any("backup header" in step for step in result["steps"])
    probe = bd.probe(dev)
    assert probe.pttype == "dos" and not probe.ambivalent
    with open(dev, "rb") as handle:
        handle.seek(128 * MIB - SECTOR)
        assert handle.read(SECTOR) == bytes(SECTOR)
    assert json.loads(sh("sfdisk", "--json", dev, text=True).stdout)["partitiontable"]["label"] == "dos"


def _boot_files(dev: str, boot_offset: int, root_offset: int):
    cmdline = sh("mtype", "-i", f"{dev}@@{boot_offset}", "::cmdline.txt", env=MTOOLS_ENV, text=True).stdout
    fstab = sh("debugfs", "-R", "cat /etc/fstab", f"{dev}?offset={root_offset}", text=True).stdout
    return cmdline, fstab


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_fresh_disk_ids_keep_two_flashed_disks_apart(loops, mbr_image, gpt_image, tmp_path, label):
    image = mbr_image if label == "dos" else gpt_image
    first, second = loops(96 * MIB), loops(96 * MIB)
    results = [_flash.flash(str(image) + ".xz", dev, confirm=True, new_disk_id=True) for dev in (first, second)]
    ids = [r["disk_id"]["new"] for r in results]
    assert ids[0] != ids[1]
    seen = set()
    for dev, result in zip((first, second), results):
        parts = {p.number: p.uuid for p in bd.partitions(dev)}
        assert not seen & set(parts.values())
        seen |= set(parts.values())
        assert sorted(result["disk_id"]["files"]) == ["partition 1: cmdline.txt", "partition 2: /etc/fstab"]
        cmdline, fstab = _boot_files(dev, BOOT_START * SECTOR, ROOT_START * SECTOR)
        assert f"root=PARTUUID={parts[2]} " in cmdline
        assert f"PARTUUID={parts[1]} /boot/firmware" in fstab and f"PARTUUID={parts[2]} / ext4" in fstab
        assert "LABEL=OURBOX_DATA /var/lib/ourbox" in fstab
        sh("e2fsck", "-fn", f"{dev}?offset={ROOT_START * SECTOR}")
        fat = tmp_path / f"fat-{os.path.basename(dev)}.bin"
        sh("dd", f"if={dev}", f"of={fat}", "bs=512", f"skip={BOOT_START}", f"count={BOOT_SECTORS}", "status=none")
        sh("fsck.fat", "-n", fat)
    # The image itself keeps its identifiers.
    assert f"root=PARTUUID={MBR_ID if label == 'dos' else GPT_ROOT_UUID}" in _boot_files(
        str(image), BOOT_START * SECTOR, ROOT_START * SECTOR)[0]


@pytest.mark.registry
def test_flash_from_an_oci_reference(loops, mbr_image, registry, tmp_path):  # noqa: F811  (fixture)
    from ansible_collections.pibake.image.plugins.module_utils import _oci
    from ansible_collections.pibake.image.plugins.module_utils._oci_ref import RegistrySettings

    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name in ("os.img.xz", "os.img.bmap"):
        (deploy / name).write_bytes((mbr_image.parent / name).read_bytes())
    settings = RegistrySettings.from_sources({"registry": registry.address}, env={})
    _oci.publish(str(deploy), settings, "ourbox/os", "1.0", forms=["artifact"], state_dir=str(tmp_path / "state"))
    dev = loops(96 * MIB)
    result = _flash.flash(f"oci://{registry.address}/ourbox/os:1.0", dev, confirm=True,
                          pull_dir=str(tmp_path / "pulled"))
    assert result["reference"] == f"{registry.address}/ourbox/os:1.0"
    assert result["image"].endswith("os.img.xz") and result["bmap"].endswith("os.img.bmap")
    assert result["verified"] and sha256_head(dev, IMAGE_SIZE) == sha256_file(mbr_image)


# ----------------------------------------------------------------------------------------------------------- data disk


def test_prepare_data_disk_on_a_blank_disk(loops, tmp_path):
    dev = loops(128 * MIB)
    planned = _data_disk.prepare(dev, check_mode=True)
    assert planned["changed"] and sha256_head(dev, MIB * 2) == hashlib.sha256(bytes(2 * MIB)).hexdigest()
    result = _data_disk.prepare(dev)
    assert result["changed"] and result["layout"] == "partition" and result["offset"] == MIB
    probe = bd.probe(dev, result["offset"], result["size"])
    assert probe.type == "ext4" and probe.label == "OURBOX_DATA"
    assert bd.probe(dev).pttype == "gpt"
    assert [p.name for p in bd.partitions(dev)] == ["OURBOX_DATA"]
    sh("e2fsck", "-fn", f"{dev}?offset={result['offset']}")
    again = _data_disk.prepare(dev, force=True)  # an existing data disk is never reformatted
    assert again["changed"] is False and again["uuid"] == result["uuid"]
    # The filesystem is usable through an offset loop (as the kernel's partition node would show it).
    part = loops(0, b"", "-o", str(result["offset"]), backing=Path(dev))
    with mounted(part, tmp_path / "mnt") as where:
        (where / "hello").write_text("data")


def test_prepare_data_disk_refuses_a_used_disk_unless_forced(loops, mbr_image):
    dev = loops(96 * MIB)
    _flash.flash(str(mbr_image), dev, confirm=True)
    with pytest.raises(PibakeError, match=r"not blank \(it has a dos partition table with 2 partition"):
        _data_disk.prepare(dev)
    assert sha256_head(dev, IMAGE_SIZE) == sha256_file(mbr_image)
    result = _data_disk.prepare(dev, force=True)
    assert result["changed"] and result["steps"][0].startswith("erase what")
    assert bd.probe(dev).pttype == "gpt"
    assert bd.probe(dev, result["offset"], result["size"]).label == "OURBOX_DATA"
    message = refusal(dev)
    assert "OURBOX_DATA" in message


def test_prepare_data_disk_refuses_a_whole_disk_filesystem(loops):
    dev = loops(64 * MIB)
    sh("mkfs.ext4", "-q", "-L", "photos", dev)
    with pytest.raises(PibakeError, match="ext4 filesystem on the whole disk"):
        _data_disk.prepare(dev)


# ----------------------------------------------------------------------------------------------------------- playbooks


def playbook(name: str, *extra: str):
    argv = [PLAYBOOK, f"playbooks/{name}"]
    for item in extra:
        argv += ["-e", item]
    return subprocess.run([str(a) for a in argv], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"))


@pytest.mark.skipif(not PLAYBOOK.exists(), reason="needs .venv (make venv)")
def test_flash_playbook_needs_flash_confirm(loops, mbr_image, tmp_path):
    dev = loops(96 * MIB)
    proc = playbook("flash.yml", f"image={mbr_image}.xz", f"device={dev}")
    assert proc.returncode != 0 and "Nothing was written" in proc.stdout, proc.stdout + proc.stderr
    assert sha256_head(dev, IMAGE_SIZE) == hashlib.sha256(bytes(IMAGE_SIZE)).hexdigest()
    progress = tmp_path / "flash.progress"
    proc = playbook("flash.yml", f"image={mbr_image}.xz", f"device={dev}", "flash_confirm=true",
                    "flash_new_disk_id=true", f"flash_progress_file={progress}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verified" in proc.stdout and "100%" in progress.read_text()
    cmdline, _ = _boot_files(dev, BOOT_START * SECTOR, ROOT_START * SECTOR)
    assert f"PARTUUID={MBR_ID}" not in cmdline


@pytest.mark.skipif(not PLAYBOOK.exists(), reason="needs .venv (make venv)")
def test_prepare_data_disk_playbook(loops, mbr_image):
    blank, used = loops(64 * MIB), loops(96 * MIB)
    proc = playbook("prepare-data-disk.yml", f"device={blank}")
    assert proc.returncode == 0 and "OURBOX_DATA" in proc.stdout, proc.stdout + proc.stderr
    _flash.flash(str(mbr_image), used, confirm=True)
    proc = playbook("prepare-data-disk.yml", f"device={used}")
    assert proc.returncode != 0 and "not blank" in proc.stdout, proc.stdout + proc.stderr
    proc = playbook("flash.yml", f"image={mbr_image}", f"device={blank}", "flash_confirm=true")
    assert proc.returncode != 0 and "must never be flashed" in proc.stdout, proc.stdout + proc.stderr
