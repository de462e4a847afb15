# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Base image sources url and path: formats, verification, cache reuse, one-sentence errors."""

from __future__ import annotations

import hashlib
import io
import lzma
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _base_image as bi
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress

sys.path.insert(0, os.path.dirname(__file__))
from _httpfixtures import RangeHandler, Server  # noqa: E402

MIB = 1 << 20


def make_disk(size_mib: int = 6) -> bytes:
    """A tiny MBR disk: one Linux partition from 1 MiB, some data, long runs of zeros."""
    mbr = bytearray(512)
    mbr[440:444] = b"\x12\x34\x56\x78"
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", 2048, (size_mib - 1) * 2048)
    mbr[510:512] = b"\x55\xaa"
    data = bytearray(size_mib * MIB)
    data[:512] = mbr
    data[MIB: MIB + 4096] = os.urandom(4096)
    data[-10:] = b"end-marker"
    return bytes(data)


DISK = make_disk()
DISK_SHA = hashlib.sha256(DISK).hexdigest()


def progress():
    return Progress(stream=io.StringIO())


@pytest.fixture()
def cache(tmp_path):
    return str(tmp_path / "cache")


def write_variant(folder, kind: str) -> str:
    folder.mkdir(exist_ok=True)
    if kind == "img":
        path = folder / "base.img"
        path.write_bytes(DISK)
    elif kind == "xz":
        path = folder / "base.img.xz"
        path.write_bytes(lzma.compress(DISK))
    elif kind == "zst":
        raw = folder / "base.img"
        raw.write_bytes(DISK)
        subprocess.run(["zstd", "-q", "--rm", str(raw)], check=True)
        path = folder / "base.img.zst"
    elif kind == "zip":
        path = folder / "base.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("README.txt", "not the image")
            archive.writestr("2025-raspios-lite.img", DISK)
    else:
        raise AssertionError(kind)
    return str(path)


@pytest.mark.parametrize("kind", ["img", "xz", "zst", "zip"])
def test_path_source_unpacks_into_cache_keyed_by_input_sha(tmp_path, cache, kind):
    src = write_variant(tmp_path / "in", kind)
    src_sha = hashlib.sha256(open(src, "rb").read()).hexdigest()
    result = bi.resolve({"type": "path", "path": src, "sha256": src_sha}, cache, progress())
    assert result["built"] is True and result["changed"] is True
    assert result["path"] == os.path.join(cache, "base", src_sha + ".img")
    assert result["sha256"] == DISK_SHA
    assert open(result["path"], "rb").read() == DISK
    assert result["source"].startswith(f"path {src}")
    # the image is stored sparse: its zeros take no blocks
    assert os.stat(result["path"]).st_blocks * 512 <= 3 * 64 * 1024
    # nothing temporary left behind
    assert [n for n in os.listdir(os.path.join(cache, "base")) if ".tmp-" in n] == []

    again = bi.resolve({"type": "path", "path": src}, cache, progress())
    assert again["built"] is False and again["changed"] is False
    assert again["path"] == result["path"] and again["sha256"] == DISK_SHA


def test_path_sha256_mismatch_names_the_fix(tmp_path, cache):
    src = write_variant(tmp_path / "in", "xz")
    with pytest.raises(PibakeError, match=r"not the .* given in pibake_base_image.sha256; fix"):
        bi.resolve({"type": "path", "path": src, "sha256": "a" * 64}, cache, progress())


def test_missing_path(tmp_path, cache):
    with pytest.raises(PibakeError, match="does not exist.*fix the path"):
        bi.resolve({"type": "path", "path": str(tmp_path / "nope.img")}, cache, progress())


def test_corrupt_xz_is_reported_and_leaves_no_entry(tmp_path, cache):
    data = lzma.compress(DISK)
    bad = tmp_path / "bad.img.xz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(PibakeError, match="corrupt or truncated xz archive"):
        bi.resolve({"type": "path", "path": str(bad)}, cache, progress())
    assert [n for n in os.listdir(os.path.join(cache, "base")) if n.endswith(".img") or ".tmp-" in n] == []


def test_corrupt_zst_is_reported(tmp_path, cache):
    src = write_variant(tmp_path / "in", "zst")
    data = open(src, "rb").read()
    bad = tmp_path / "bad.img.zst"
    bad.write_bytes(data[:-40])
    with pytest.raises(PibakeError, match="corrupt or truncated zst archive"):
        bi.resolve({"type": "path", "path": str(bad)}, cache, progress())


def test_corrupt_zip_is_reported(tmp_path, cache):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04" + os.urandom(3000))
    with pytest.raises(PibakeError, match="corrupt or truncated zip archive"):
        bi.resolve({"type": "path", "path": str(bad)}, cache, progress())


@pytest.mark.parametrize("names,count", [(["a.img", "b.img"], 2), (["readme.txt"], 0)])
def test_zip_must_hold_exactly_one_img(tmp_path, cache, names, count):
    path = tmp_path / "x.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, DISK if name.endswith(".img") else "x")
    with pytest.raises(PibakeError, match=f"holds {count} .img files.*exactly one"):
        bi.resolve({"type": "path", "path": str(path)}, cache, progress())


def test_not_a_disk_image(tmp_path, cache):
    path = tmp_path / "notes.img.xz"
    path.write_bytes(lzma.compress(b"hello world\n" * 1000))
    with pytest.raises(PibakeError, match="is not a disk image"):
        bi.resolve({"type": "path", "path": str(path)}, cache, progress())
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(4096))
    with pytest.raises(PibakeError, match="is not a disk image"):
        bi.resolve({"type": "path", "path": str(plain)}, cache, progress())


def test_url_source_downloads_verifies_caches_and_reuses(tmp_path, cache):
    www = tmp_path / "www"
    src = write_variant(www, "xz")
    sha = hashlib.sha256(open(src, "rb").read()).hexdigest()
    with Server(str(www), RangeHandler) as server:
        spec = {"type": "url", "url": f"{server.url}/base.img.xz", "sha256": sha, "release": "bookworm"}
        first = bi.resolve(spec, cache, progress())
        assert first["built"] is True and first["sha256"] == DISK_SHA and first["release"] == "bookworm"
        assert first["path"] == os.path.join(cache, "base", sha + ".img")
        assert open(first["path"], "rb").read() == DISK
        assert "download" in first["timings"] and "unpack" in first["timings"]
        assert os.listdir(os.path.join(cache, "downloads")) == []  # the download is not kept twice
        requests = len(server.handler.ranges)
        second = bi.resolve(spec, cache, progress())
        assert second["built"] is False and second["path"] == first["path"]
        assert len(server.handler.ranges) == requests  # served from the cache, no network


def test_url_check_mode_touches_nothing(tmp_path, cache):
    result = bi.resolve({"type": "url", "url": "http://127.0.0.1:9/x.img", "sha256": "b" * 64}, cache, progress(),
                        check_mode=True)
    assert result["changed"] is True and result["built"] is False and result["sha256"] is None
    assert not os.path.exists(cache)


def test_interrupted_entry_is_absent_and_stale_temp_reaped(tmp_path, cache):
    src = write_variant(tmp_path / "in", "img")
    sha = hashlib.sha256(DISK).hexdigest()
    base = os.path.join(cache, "base")
    os.makedirs(base)
    # a json without its image (killed between the two renames) and a temp file of a dead process
    with open(os.path.join(base, sha + ".json"), "w") as handle:
        handle.write('{"sha256": "x"}')
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = os.path.join(base, f".{sha}.img.tmp-{dead.pid}")
    open(stale, "wb").close()
    stale_dir = os.path.join(base, f".debian-x.work.tmp-{dead.pid}")
    os.makedirs(os.path.join(stale_dir, "root", "etc"))
    result = bi.resolve({"type": "path", "path": src}, cache, progress())
    assert result["built"] is True and result["sha256"] == DISK_SHA
    assert not os.path.exists(stale) and not os.path.exists(stale_dir)


@pytest.mark.parametrize(
    "spec,message",
    [
        ({"type": "ftp"}, r"type 'ftp' is unknown; use one of url, path, debian"),
        ({"type": "url", "url": "http://x/y.img"}, "needs sha256"),
        ({"type": "url", "sha256": "a" * 64}, "needs a url"),
        ({"type": "url", "url": "file:///x.img", "sha256": "a" * 64}, "not an http"),
        ({"type": "url", "url": "http://x/y", "sha256": "a" * 64, "checksum": 1}, "unknown key.*checksum"),
        ({"type": "path"}, "needs a path"),
        ({"type": "debian", "release": "buster"}, "release 'buster' is not supported"),
        ({"type": "debian", "flavour": "x"}, "unknown key.*flavour"),
        ("debian", "must be a dict"),
    ],
)
def test_bad_specs_fail_with_one_sentence(spec, message, cache):
    with pytest.raises(PibakeError, match=message):
        bi.resolve(spec, cache, progress(), check_mode=True)


def test_default_is_debian(cache):
    assert bi.normalize_source(None)["type"] == "debian"
    assert bi.normalize_source({})["type"] == "debian"
    planned = bi.resolve(None, cache, progress(), check_mode=True)
    assert planned["release"] == "trixie" and planned["path"].endswith(".img")
    assert "/base/debian-trixie-arm64-" in planned["path"]


def test_detect_format_by_content_not_name(tmp_path):
    path = tmp_path / "misnamed.img"
    path.write_bytes(lzma.compress(b"x"))
    assert bi.detect_format(str(path)) == "xz"


def test_sparse_writer_round_trip(tmp_path):
    dest = tmp_path / "out"
    writer = bi._SparseWriter(str(dest))
    pieces = [b"a" * 1000, bytes(3 * MIB + 17), b"b" * 5, bytes(100)]
    for piece in pieces:
        writer.write(piece)
    digest = writer.close()
    whole = b"".join(pieces)
    assert dest.read_bytes() == whole
    assert digest == hashlib.sha256(whole).hexdigest()


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PIBAKE_CACHE_DIR", str(tmp_path))
    assert bi.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("PIBAKE_CACHE_DIR")
    assert bi.default_cache_dir().endswith("/.cache/pibake")


def test_requires_zstd_binary_for_zst(tmp_path, cache, monkeypatch):
    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    src = write_variant(tmp_path / "in", "zst")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PibakeError, match="zstd not found.*install zstd"):
        bi.resolve({"type": "path", "path": src}, cache, progress())


def test_concurrent_resolves_of_one_entry_build_it_once(tmp_path, cache):
    import threading

    src = write_variant(tmp_path / "in", "xz")
    results = []

    def worker():
        results.append(bi.resolve({"type": "path", "path": src}, cache, progress()))

    threads = [threading.Thread(target=worker) for dummy in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 3
    assert sorted(r["built"] for r in results) == [False, False, True]
    assert len({r["path"] for r in results}) == 1
