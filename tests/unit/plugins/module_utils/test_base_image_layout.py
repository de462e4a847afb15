# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""check_layout: an image pibake cannot attach is refused before it is cached (no root, no loop device)."""

import io
import os
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _base_image as bi
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress

MIB = 1 << 20


def disk(path, table: str, root_fs: str = "ext4") -> str:
    with open(path, "wb") as handle:
        handle.truncate(24 * MIB)
    subprocess.run(["sfdisk", "-q", str(path)], input=table.encode(), check=True)
    if root_fs:
        subprocess.run([f"mkfs.{root_fs}", "-q", "-F", "-E", f"offset={8 * MIB}", str(path), str(16 * 1024)],
                       check=True, capture_output=True)
    return str(path)


PI = "label: dos\nstart=2048, size=12288, type=c\nstart=16384, type=83\n"


def resolve(cache, path):
    return bi.resolve({"type": "path", "path": path}, str(cache), Progress(stream=io.StringIO()), check_layout=True)


def cached(cache):
    base = os.path.join(str(cache), "base")
    return sorted(n for n in os.listdir(base) if n.endswith((".img", ".json")) or ".tmp-" in n)


def test_a_pi_layout_is_cached(tmp_path):
    result = resolve(tmp_path / "cache", disk(tmp_path / "pi.img", PI))
    assert os.path.isfile(result["path"]) and len(cached(tmp_path / "cache")) == 2


@pytest.mark.parametrize("table, root_fs, message", [
    ("label: gpt\nstart=2048, size=12288\nstart=16384\n", "ext4", r"uses a GPT partition table; .*MBR layout"),
    (PI, "ext2", r"Partition 2 of .*pi\.img holds no ext4 filesystem"),
    ("label: dos\nstart=16384, type=83\n", "ext4", r"lacks partition 1 \(boot\) or 2 \(root\)"),
])
def test_what_cannot_be_attached_is_never_cached(tmp_path, table, root_fs, message):
    path = disk(tmp_path / "pi.img", table, root_fs)
    with pytest.raises(PibakeError, match=message):
        resolve(tmp_path / "cache", path)
    assert cached(tmp_path / "cache") == []
