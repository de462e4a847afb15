# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The finalize phase end to end on small test images: the real shrink through an offset loop device, the three
free-space methods, and ``playbooks/finalize.yml`` with every output checked the way a user would check it
(``sha256sum -c``, ``xz -t``, ``bmaptool copy``, the Imager manifest, the SBOM schema).

Loop devices are only those these tests attach, always detached in ``finally``.
"""

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _expand, _ext4, _freespace, _offsetloop, _shrink
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._imagefile import read_table
from tests.support.finalize_images import image_copy, root_offset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/loop-control"),
                       reason="needs root and loop devices"),
]


def _sha(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(4 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsck_on_loop(img):
    """Attach the root partition again (as a device would see it) and check it read-only."""
    table = read_table(img)
    root = table.last
    with _offsetloop.attached(img, root.offset, root.length) as device:
        proc = subprocess.run(["e2fsck", "-fn", device], capture_output=True, text=True)
        size = int(subprocess.run(["blockdev", "--getsize64", device], capture_output=True, text=True).stdout)
    return proc, size


def test_shrink_goes_below_resize2fs_minimum_and_checks_clean(tmp_path):
    img = image_copy(tmp_path, data_mb=6, deleted_mb=16, size_mb=544)
    before = os.path.getsize(img)
    result = _shrink.shrink(img, margin=16 * MIB)
    assert result["changed"] and result["size_after"] == os.path.getsize(img) < before
    assert result["minimum_blocks"] <= result["estimate_blocks"]          # never above where resize2fs -M stops
    assert result["blocks_after"] - result["minimum_blocks"] - 16 * MIB // 4096 < MIB // 4096    # + margin, aligned
    assert result["blocks_after"] * 4096 <= (result["used_blocks"] * 4096) * 1.05 + 16 * MIB + MIB
    table = read_table(img)
    assert table.last.end == os.path.getsize(img)                          # file ends with the root partition
    assert table.last.length == result["blocks_after"] * 4096
    proc, device_size = _fsck_on_loop(img)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert device_size == result["blocks_after"] * 4096
    assert _expand.is_armed(table, table.last.offset) == "systemd"
    assert _ext4.read_file(img, table.last.offset, "/etc/hostname") == b"pibake-test\n"
    again = _shrink.shrink(img, margin=16 * MIB)                          # a second run changes nothing
    assert not again["changed"] and os.path.getsize(img) == result["size_after"]


def test_shrink_clears_a_stale_journal_and_the_kernel_mounts_it(tmp_path):
    img = image_copy(tmp_path, data_mb=2, deleted_mb=0, fat_deleted_mb=0)
    off = root_offset(img)
    ranges = _shrink.journal_blocks(img, off)
    before = _ext4.superblock(img, off)
    with open(img, "r+b") as handle:                      # old transactions, as a build leaves the journal
        for first, count in ranges:
            handle.seek(off + first * 4096)
            handle.write(os.urandom(count * 4096))
    result = _shrink.shrink(img, margin=8 * MIB)
    assert result["journal_cleared_bytes"] == sum(count for _first, count in ranges) * 4096
    off = read_table(img).last.offset
    after = _ext4.superblock(img, off)
    for key in ("Journal inode", "Journal features", "Total journal size", "Total journal blocks", "Journal start",
                "Journal sequence"):
        assert after.get(key) == before.get(key), key
    with open(img, "rb") as handle:
        for first, count in _shrink.journal_blocks(img, off):
            handle.seek(off + first * 4096)
            assert handle.read(count * 4096) == bytes(count * 4096)
    root = read_table(img).last
    with _offsetloop.attached(img, root.offset, root.length) as device:
        with _offsetloop.mounted(device, "ext4") as where:
            with open(os.path.join(where, "written-after-clear"), "wb") as handle:
                handle.write(os.urandom(MIB))
            assert open(os.path.join(where, "etc/hostname"), "rb").read() == b"pibake-test\n"
    proc, _size = _fsck_on_loop(img)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_shrink_gpt_moves_the_backup_header(tmp_path):
    img = image_copy(tmp_path, label="gpt", data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    _shrink.shrink(img, margin=8 * MIB)
    verify = subprocess.run(["sfdisk", "--verify", img], capture_output=True, text=True)
    assert verify.returncode == 0 and "backup" not in (verify.stdout + verify.stderr).lower(), verify.stdout
    assert read_table(img).last.end + 33 * 512 == os.path.getsize(img)
    assert _fsck_on_loop(img)[0].returncode == 0


def test_shrink_refuses_an_attached_image(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0)
    root = read_table(img).last
    with _offsetloop.attached(img, root.offset, root.length):
        with pytest.raises(PibakeError, match="still attached"):
            _shrink.shrink(img)
        with pytest.raises(PibakeError, match="still attached"):
            _freespace.discard(img)


def _content_digest(img):
    """SHA-256 of the image with the root superblock's block masked (zerofree and mount stamp times there)."""
    off = root_offset(img)
    digest = hashlib.sha256()
    with open(img, "rb") as handle:
        data = handle.read()
    digest.update(data[:off] + bytes(4096) + data[off + 4096:])
    return digest.hexdigest()


def _zstd_size(img):
    return len(subprocess.run(["zstd", "-3", "-T1", "-c", img], check=True, capture_output=True).stdout)


def test_free_space_methods_give_the_same_result(tmp_path):
    """punch (bitmap + holes), fstrim (offset loop mount) and zerofree (+ dig holes) leave the same data."""
    timings, digests, allocated, packed = {}, {}, {}, {}
    untouched = image_copy(tmp_path, name="none.img", data_mb=6, deleted_mb=24, fat_deleted_mb=4)
    for method in ("punch", "fstrim", "zerofree"):
        img = image_copy(tmp_path, name=f"{method}.img", data_mb=6, deleted_mb=24, fat_deleted_mb=4)
        started = time.monotonic()
        result = _freespace.discard(img, method)
        timings[method] = round(time.monotonic() - started, 3)
        assert result["changed"]
        allocated[method] = result["allocated_after"]
        assert _fsck_on_loop(img)[0].returncode == 0
        digests[method] = _content_digest(img)
        packed[method] = _zstd_size(img)
    assert digests["punch"] == digests["zerofree"]
    assert max(allocated.values()) - min(allocated.values()) <= 2 * MIB
    assert max(packed.values()) - min(packed.values()) <= 64 << 10
    assert _zstd_size(untouched) > packed["punch"] + 20 * MIB        # the deleted data was really dropped
    sys.stderr.write(f"free-space seconds: {timings}, zstd -3 sizes: {packed}\n")


def test_finalize_playbook_outputs_verify(tmp_path):
    img = image_copy(tmp_path, name="cubeos.img", data_mb=6, deleted_mb=16, fat_deleted_mb=4)
    deploy = tmp_path / "deploy"
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), SOURCE_DATE_EPOCH="1700000000")
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "playbooks/finalize.yml",
         "-e", f"image={img}", "-e", f"deploy_dir={deploy}", "-e", "finalize_version=1.0",
         "-e", "finalize_url=https://releases.example.invalid/cubeos.img.xz"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    names = sorted(os.listdir(deploy))
    assert names == ["build.log", "cubeos.bmap", "cubeos.cdx.json", "cubeos.img.sha256", "cubeos.img.xz",
                     "cubeos.img.xz.sha256", "os.info", "os_list_local.json", "rpi-imager.json"]
    packed = deploy / "cubeos.img.xz"
    subprocess.run(["sha256sum", "-c", "--strict", "cubeos.img.xz.sha256"], cwd=deploy, check=True)
    subprocess.run(["xz", "-t", str(packed)], check=True)
    # the image checksum names cubeos.img: decompress next to it and check
    subprocess.run(["xz", "-dk", str(packed)], check=True)
    subprocess.run(["sha256sum", "-c", "--strict", "cubeos.img.sha256"], cwd=deploy, check=True)
    assert _sha(deploy / "cubeos.img") == _sha(img)
    os.unlink(deploy / "cubeos.img")
    # bmaptool copy of the compressed image onto a file reproduces the image
    flashed = tmp_path / "flashed.img"
    subprocess.run(["bmaptool", "-q", "copy", "--bmap", str(deploy / "cubeos.bmap"), str(packed), str(flashed)],
                   check=True)
    assert _sha(flashed) == _sha(img)
    # Imager manifest
    entry = json.loads((deploy / "rpi-imager.json").read_text())["os_list"][0]
    assert entry["url"] == "https://releases.example.invalid/cubeos.img.xz"
    assert entry["extract_sha256"] == _sha(img) and entry["extract_size"] == os.path.getsize(img)
    assert entry["image_download_sha256"] == _sha(packed) and entry["image_download_size"] == os.path.getsize(packed)
    assert entry["devices"] == ["pi5-64bit", "pi4-64bit"] and entry["init_format"] == "systemd"
    local = json.loads((deploy / "os_list_local.json").read_text())["os_list"][0]
    assert local["url"] == "file://" + str(packed)
    # SBOM, os.info, build.log
    sbom = json.loads((deploy / "cubeos.cdx.json").read_text())
    assert sbom["bomFormat"] == "CycloneDX" and len(sbom["components"]) == 3
    info = (deploy / "os.info").read_text()
    assert 'IMAGE="cubeos.img.xz"' in info and f'EXTRACT_SHA256="{_sha(img)}"' in info
    log = (deploy / "build.log").read_text()
    assert "shrink:" in log and "compress:" in log and "verified=True" in log
    # the shrunk image, attached again, checks clean and will grow at first boot
    proc, _size = _fsck_on_loop(img)
    assert proc.returncode == 0, proc.stdout
    table = read_table(img)
    assert _expand.is_armed(table, root_offset(img)) == "systemd"


def test_finalize_playbook_stops_on_board_lint(tmp_path):
    img = image_copy(tmp_path, name="broken.img", data_mb=1, deleted_mb=0, fat_deleted_mb=0,
                     fstab_extra="UUID=dead-beef /data ext4 defaults 0 2\n")
    deploy = tmp_path / "deploy"
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"))
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "playbooks/finalize.yml",
         "-e", f"image={img}", "-e", f"deploy_dir={deploy}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "Board lint failed: /etc/fstab mounts UUID=dead-beef on /data" in proc.stdout
    assert not (deploy / "broken.img.xz").exists()
