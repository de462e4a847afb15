# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
import json
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._partitions import (
    grow_last_partition,
    parse_sfdisk_json,
    parse_size,
    read_table,
    require_pi_layout,
)

PI_TABLE = {
    "partitiontable": {
        "label": "dos", "id": "0x5eed0001", "device": "x.img", "unit": "sectors", "sectorsize": 512,
        "partitions": [
            {"node": "x.img1", "start": 8192, "size": 1048576, "type": "c"},
            {"node": "x.img2", "start": 1056768, "size": 4194304, "type": "83"},
        ],
    }
}


def test_parse_pi_table_offsets_and_partuuid():
    table = parse_sfdisk_json(json.dumps(PI_TABLE))
    boot, root = table.get(1), table.get(2)
    assert boot.offset == 8192 * 512 and boot.is_fat
    assert root.end == (1056768 + 4194304) * 512 and not root.is_fat
    assert table.partuuid(2) == "5eed0001-02"
    require_pi_layout(table, "x.img")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.update(label="gpt"), "GPT"),
        (lambda t: t["partitions"].pop(), "lacks partition"),
        (lambda t: t["partitions"][0].update(type="83"), "not a FAT"),
        (lambda t: t["partitions"].append({"node": "x.img3", "start": 6000000, "size": 10, "type": "83"}), "not the last"),
    ],
)
def test_layouts_pibake_cannot_customize_are_refused(change, message):
    raw = json.loads(json.dumps(PI_TABLE))
    change(raw["partitiontable"])
    with pytest.raises(PibakeError, match=message):
        require_pi_layout(parse_sfdisk_json(json.dumps(raw)), "x.img")


def test_garbage_is_no_partition_table():
    with pytest.raises(PibakeError, match="partition table"):
        parse_sfdisk_json("{}")


@pytest.mark.parametrize("text, value", [("1G", 1 << 30), ("512M", 512 << 20), ("0", 0), ("2GiB", 2 << 30), (4096, 4096)])
def test_parse_size(text, value):
    assert parse_size(text) == value


def test_parse_size_refuses_nonsense():
    with pytest.raises(PibakeError, match="not understood"):
        parse_size("lots")


def test_grow_last_partition_on_a_file(tmp_path):
    image = tmp_path / "disk.img"
    with open(image, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(image)], input=b"label: dos\n8192,32768,c\n40960,,83\n", check=True)
    before = read_table(str(image)).get(2)
    table = grow_last_partition(str(image), 32 << 20, 2)
    after = table.get(2)
    assert after.start == before.start
    assert after.length == before.length + (32 << 20)
    assert image.stat().st_size == 96 << 20
