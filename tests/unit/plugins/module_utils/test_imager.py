# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_imager: the os_list entry and the two manifest files."""

import hashlib
import json

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _imager
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

FIELDS = {"name", "description", "url", "icon", "release_date", "extract_size", "extract_sha256",
          "image_download_size", "image_download_sha256", "devices", "init_format"}


@pytest.fixture
def files(tmp_path):
    img, packed = tmp_path / "os.img", tmp_path / "os.img.xz"
    img.write_bytes(b"i" * 5000)
    packed.write_bytes(b"p" * 300)
    return str(img), str(packed)


def test_entry_has_every_field_imager_needs(files):
    img, packed = files
    item = _imager.entry(name="CubeOS 1.0", description="appliance", url="https://x.example/os.img.xz",
                         image=img, compressed=packed, release_date="2026-01-02")
    assert FIELDS <= set(item)
    assert item["extract_size"] == 5000 and item["image_download_size"] == 300
    assert item["extract_sha256"] == hashlib.sha256(b"i" * 5000).hexdigest()
    assert item["image_download_sha256"] == hashlib.sha256(b"p" * 300).hexdigest()
    assert item["devices"] == ["pi5-64bit", "pi4-64bit"] and item["init_format"] == "systemd"


def test_write_publishes_both_manifests(tmp_path, files):
    img, packed = files
    item = _imager.entry(name="n", description="d", url="os.img.xz", image=img, compressed=packed,
                         image_sha256="a" * 64, image_size=7, compressed_sha256="b" * 64)
    result = _imager.write(str(tmp_path / "out"), item, packed)
    online = json.loads(open(result["manifest"]).read())
    local = json.loads(open(result["local_manifest"]).read())
    assert online["os_list"][0]["url"] == "os.img.xz" and online["os_list"][0]["extract_size"] == 7
    assert local["os_list"][0]["url"] == "file://" + packed
    assert {k: v for k, v in local["os_list"][0].items() if k != "url"} == \
        {k: v for k, v in online["os_list"][0].items() if k != "url"}


@pytest.mark.parametrize("kwargs,message", [
    ({"init_format": "firstrun"}, "init_format 'firstrun' is unknown"),
    ({"devices": ["raspberrypi5"]}, "not Imager tags"),
    ({"release_date": "02/01/2026"}, "YYYY-MM-DD"),
])
def test_invalid_values_are_refused(files, kwargs, message):
    img, packed = files
    with pytest.raises(PibakeError, match=message):
        _imager.entry(name="n", description="d", url="u", image=img, compressed=packed, **kwargs)
