# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_bmap: the map bmaptool writes describes the sparse image, and bmaptool copy reproduces it from the .xz."""

import hashlib
import os
import subprocess

from ansible_collections.pibake.image.plugins.module_utils import _bmap, _compress


def test_bmap_copy_of_the_compressed_image_reproduces_it(tmp_path):
    img = tmp_path / "os.img"
    with open(img, "wb") as handle:
        handle.write(os.urandom(1 << 20))
        handle.seek(8 << 20)
        handle.write(os.urandom(512 << 10))
        handle.truncate(16 << 20)
    result = _bmap.create(str(img), str(tmp_path / "os.bmap"))
    assert result["image_size"] == 16 << 20 and result["block_size"] == 4096
    assert result["mapped_blocks"] == (1536 << 10) // 4096          # only the data, not the holes
    packed = _compress.compress(str(img), level=0)
    fresh = tmp_path / "fresh.img"
    subprocess.run(["bmaptool", "-q", "copy", "--bmap", str(tmp_path / "os.bmap"), packed["output"], str(fresh)],
                   check=True, capture_output=True)
    assert hashlib.sha256(fresh.read_bytes()).hexdigest() == packed["image_sha256"]


def test_check_mode_writes_nothing(tmp_path):
    img = tmp_path / "os.img"
    img.write_bytes(b"x" * 4096)
    assert _bmap.create(str(img), str(tmp_path / "os.bmap"), check_mode=True)["changed"]
    assert not (tmp_path / "os.bmap").exists()
