# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _fatstage
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


@pytest.fixture()
def fat_image(tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(80 << 20)
    subprocess.run(["sfdisk", "-q", str(image)], input=b"label: dos\n2048,70M,c\n", check=True)
    subprocess.run(["mkfs.fat", "-F", "32", "-n", "BOOTFS", "-i", "12345678", "--offset", "2048", "--mbr=n",
                    str(image), str(70 * 1024)], check=True, capture_output=True)
    return str(image)


def test_geometry_keeps_label_and_serial(fat_image):
    geometry = _fatstage.read_geometry(fat_image, 2048 * 512)
    assert (geometry.fat_bits, geometry.label, geometry.serial) == (32, "BOOTFS", "12345678")


def test_not_fat_is_one_sentence(tmp_path):
    blank = tmp_path / "blank"
    blank.write_bytes(bytes(4096))
    with pytest.raises(PibakeError, match="no FAT"):
        _fatstage.read_geometry(str(blank), 0)


def test_round_trip_through_a_staging_folder(fat_image, tmp_path):
    stage = tmp_path / "stage"
    saved = _fatstage.extract(fat_image, 2048 * 512, str(stage))
    assert list(stage.iterdir()) == []
    assert _fatstage.write_back(fat_image, 2048 * 512, 70 << 20, str(stage), saved) is False
    (stage / "config.txt").write_text("arm_64bit=1\n")
    (stage / "overlays").mkdir()
    (stage / "overlays" / "a.dtbo").write_bytes(b"\x01" * 5000)
    mbr_before = open(fat_image, "rb").read(512)
    assert _fatstage.write_back(fat_image, 2048 * 512, 70 << 20, str(stage), saved) is True
    assert open(fat_image, "rb").read(512) == mbr_before
    again = tmp_path / "again"
    _fatstage.extract(fat_image, 2048 * 512, str(again))
    assert (again / "config.txt").read_text() == "arm_64bit=1\n"
    assert (again / "overlays" / "a.dtbo").read_bytes() == b"\x01" * 5000
    assert _fatstage.read_geometry(fat_image, 2048 * 512).serial == "12345678"


def test_tree_digest_sees_content_changes(tmp_path):
    (tmp_path / "a").write_text("1")
    first = _fatstage.tree_digest(str(tmp_path))
    (tmp_path / "a").write_text("2")
    assert _fatstage.tree_digest(str(tmp_path)) != first
