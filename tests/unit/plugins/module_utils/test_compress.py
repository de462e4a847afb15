# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_compress: streaming compression with a verified round trip, atomic output, failures leave nothing."""

import hashlib
import lzma
import os
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _compress
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "disk.img"
    with open(path, "wb") as handle:
        handle.write(os.urandom(1 << 20))
        handle.write(b"pibake " * (256 << 10))
        handle.truncate(8 << 20)            # a hole at the end, like a trimmed image
    return str(path)


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.parametrize("fmt,level,reader", [("xz", 1, ["xz", "-dc"]), ("zstd", 3, ["zstd", "-dc", "--long=31"])])
def test_round_trip_is_verified_and_hashes_are_right(tmp_path, image, fmt, level, reader):
    lines = []
    out = str(tmp_path / "deploy" / ("disk.img" + _compress.FORMATS[fmt]["suffix"]))
    result = _compress.compress(image, out, fmt=fmt, level=level, progress_interval=0, log=lines.append)
    assert result["verified"] and result["output"] == out
    assert result["image_sha256"] == _sha(image) and result["compressed_sha256"] == _sha(out)
    assert result["image_size"] == 8 << 20 and result["compressed_size"] == os.path.getsize(out)
    unpacked = subprocess.run(reader + [out], check=True, capture_output=True).stdout
    assert hashlib.sha256(unpacked).hexdigest() == result["image_sha256"]
    assert lines and "verified=True" in lines[-1]
    assert sorted(os.listdir(tmp_path / "deploy")) == [os.path.basename(out)]     # no temp file left


def test_xz_output_is_multi_block_and_standard(tmp_path, image):
    out = str(tmp_path / "disk.img.xz")
    _compress.compress(image, out, level=0, block_size=1 << 20)
    with open(out, "rb") as handle:
        assert lzma.decompress(handle.read()) == open(image, "rb").read()
    listing = subprocess.run(["xz", "--robot", "-lv", out], check=True, capture_output=True, text=True).stdout
    assert sum(1 for line in listing.splitlines() if line.startswith("block")) == 8


def test_a_wrong_round_trip_discards_the_output(tmp_path, image, monkeypatch):
    # a "decompressor" that outputs other bytes: the hash check must catch it and publish nothing
    monkeypatch.setattr(_compress, "decompressor_argv", lambda fmt: ["sh", "-c", "cat >/dev/null; printf x"])
    out = tmp_path / "disk.img.xz"
    with pytest.raises(PibakeError, match="does not decompress to the image"):
        _compress.compress(image, str(out), level=0)
    assert not out.exists() and os.listdir(tmp_path) == ["disk.img"]


def test_a_failing_compressor_discards_the_output(tmp_path, image, monkeypatch):
    monkeypatch.setattr(_compress, "compressor_argv", lambda *a: ["sh", "-c", "head -c 10 >/dev/null; exit 3"])
    with pytest.raises(PibakeError):
        _compress.compress(image, str(tmp_path / "disk.img.xz"))
    assert os.listdir(tmp_path) == ["disk.img"]


def test_levels_and_formats_are_validated(image):
    with pytest.raises(PibakeError, match="level 10 is out of range"):
        _compress.compressor_argv("xz", 10, 0)
    with pytest.raises(PibakeError, match="Unknown compression"):
        _compress.compressor_argv("gzip", 6, 0)
    assert _compress.compressor_argv("zstd", 22, 0)[:4] == ["zstd", "-c", "-q", "--ultra"]
    assert _compress.default_output(image, "zstd").endswith("disk.img.zst")
    result = _compress.compress(image, check_mode=True)
    assert result["output"].endswith("disk.img.xz") and not os.path.exists(result["output"])
