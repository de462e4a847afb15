# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_flash without root: bmap parsing, source detection, PARTUUID rewriting, and the writer/verifier run against a
regular file standing in for the disk (the block-device rules are covered by tests/integration/test_flash.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _blockdev as bd
from ansible_collections.pibake.image.plugins.module_utils import _flash
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

MIB = 1 << 20


def make_bmap(image_size, block_size, ranges, data=None, version="2.0", algo="sha256", attr="chksum",
              with_file_checksum=True):
    """A bmap document like bmaptool's; ``ranges`` are (first, last) block numbers; checksums from ``data``."""
    lines = [f'<bmap version="{version}">', f"<ImageSize> {image_size} </ImageSize>",
             f"<BlockSize> {block_size} </BlockSize>", f"<BlocksCount> {-(-image_size // block_size)} </BlocksCount>",
             f"<MappedBlocksCount> {sum(b - a + 1 for a, b in ranges)} </MappedBlocksCount>"]
    if version.startswith("2") or attr == "chksum":
        lines.append(f"<ChecksumType> {algo} </ChecksumType>")
    tag = "BmapFileChecksum" if version.startswith("2") or attr == "chksum" else "BmapFileSHA1"
    placeholder = "0" * hashlib.new(algo if tag == "BmapFileChecksum" else "sha1").digest_size * 2
    if with_file_checksum:
        lines.append(f"<{tag}> {placeholder} </{tag}>")
    lines.append("<BlockMap>")
    for first, last in ranges:
        span = f"{first}-{last}" if last != first else f"{first}"
        digest = ""
        if data is not None:
            digest = hashlib.new(algo, data[first * block_size:min((last + 1) * block_size, image_size)]).hexdigest()
        checksum = f' {attr}="{digest}"' if digest else ""
        lines.append(f"<Range{checksum}> {span} </Range>")
    lines += ["</BlockMap>", "</bmap>"]
    raw = ("\n".join(lines) + "\n").encode()
    if with_file_checksum:
        digest = hashlib.new(algo if tag == "BmapFileChecksum" else "sha1", raw).hexdigest()
        raw = raw.replace(placeholder.encode(), digest.encode(), 1)
    return raw


# ----------------------------------------------------------------------------------------------------------- bmap


def test_parse_bmap_reads_ranges_and_clips_the_last_block():
    data = os.urandom(10 * 4096 + 100)
    raw = make_bmap(len(data), 4096, [(0, 0), (3, 5), (10, 10)], data)
    bmap = _flash.parse_bmap(raw)
    assert bmap.image_size == len(data)
    assert [(r.start, r.end) for r in bmap.ranges] == [(0, 4096), (3 * 4096, 6 * 4096), (10 * 4096, len(data))]
    assert bmap.mapped_bytes == 4096 + 3 * 4096 + 100
    assert bmap.ranges[1].checksum == hashlib.sha256(data[3 * 4096:6 * 4096]).hexdigest()


def test_parse_bmap_rejects_an_altered_file():
    raw = make_bmap(8192, 4096, [(0, 1)], bytes(8192))
    tampered = raw.replace(b"> 0-1 <", b"> 0-0 <")
    with pytest.raises(PibakeError, match="fails its own checksum"):
        _flash.parse_bmap(tampered)


def test_parse_bmap_version_1_with_sha1():
    data = os.urandom(3 * 4096)
    raw = make_bmap(len(data), 4096, [(1, 2)], data, version="1.3", algo="sha1", attr="sha1")
    bmap = _flash.parse_bmap(raw)
    assert bmap.checksum_type == "sha1"
    assert bmap.ranges[0].checksum == hashlib.sha1(data[4096:]).hexdigest()


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"not xml", "not valid XML"),
        (b"<other/>", "not a bmap file"),
        (b'<bmap version="3.0"><ImageSize>1</ImageSize><BlockSize>1</BlockSize></bmap>', "format version"),
        (b'<bmap version="2.0"><BlockSize>4096</BlockSize></bmap>', "lacks ImageSize"),
        (b'<bmap version="2.0"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize><BlockMap>'
         b"<Range>0-1</Range><Range>1</Range></BlockMap></bmap>", "overlapping"),
        (b'<bmap version="2.0"><ImageSize>8192</ImageSize><BlockSize>4096</BlockSize><BlockMap>'
         b"<Range>5</Range></BlockMap></bmap>", "outside the image"),
    ],
)
def test_parse_bmap_refuses_broken_files(raw, message):
    with pytest.raises(PibakeError, match=message):
        _flash.parse_bmap(raw)


def test_bmap_candidates_cover_compressed_names(tmp_path):
    assert _flash.bmap_candidates("/d/os.img.xz") == ["/d/os.img.xz.bmap", "/d/os.img.bmap", "/d/os.bmap"]
    assert _flash.bmap_candidates("/d/os.img") == ["/d/os.img.bmap", "/d/os.bmap"]
    image = tmp_path / "os.img.zst"
    image.write_bytes(b"x")
    assert _flash.find_bmap(str(image)) is None
    (tmp_path / "os.img.bmap").write_bytes(b"x")
    assert _flash.find_bmap(str(image)) == str(tmp_path / "os.img.bmap")


# ----------------------------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("tool, kind", [(None, "none"), ("xz", "xz"), ("zstd", "zstd"), ("gzip", "gzip")])
def test_compression_is_recognised_by_content_and_size_is_known(tmp_path, tool, kind):
    if tool and shutil.which(tool) is None:
        pytest.skip(f"{tool} missing")
    data = os.urandom(MIB // 4) + bytes(3 * MIB)
    path = tmp_path / "os.img"
    path.write_bytes(data)
    if tool:
        subprocess.run([tool, "-q", "-1", "-f", str(path)], check=True)
        path = next(p for p in tmp_path.iterdir() if p.name != "os.img")
        renamed = tmp_path / "misleading-name.img"  # the name says raw; the content decides
        path.rename(renamed)
        path = renamed
    source = _flash.open_source(str(path), use_bmap=False)
    assert source.compression == kind
    assert source.size == len(data)
    if kind == "gzip":
        assert source.size_from == "decompressed once"


def test_bmap_that_does_not_fit_the_image_is_refused(tmp_path):
    image = tmp_path / "os.img"
    image.write_bytes(bytes(8192))
    (tmp_path / "os.img.bmap").write_bytes(make_bmap(4096, 4096, [(0, 0)], bytes(4096)))
    with pytest.raises(PibakeError, match="do not belong together"):
        _flash.open_source(str(image))
    assert _flash.open_source(str(image), use_bmap=False).bmap is None


def test_missing_image_and_directory_are_refused(tmp_path):
    with pytest.raises(PibakeError, match="does not exist"):
        _flash.open_source(str(tmp_path / "nope.img.xz"))
    with pytest.raises(PibakeError, match="not a regular file"):
        _flash.open_source(str(tmp_path))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("oci://registry.local:5000/ourbox/os:1.0", True),
        ("registry.local:5000/ourbox/os:1.0", True),
        ("ghcr.io/techofourown/os@sha256:" + "a" * 64, True),
        ("deploy/os.img.xz", False),
        ("/root/os.img.xz", False),
        ("os.img", False),
    ],
)
def test_oci_references_are_told_from_paths(text, expected):
    assert _flash.is_oci_reference(text) is expected


def test_oci_reference_without_pull_support_says_so(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "ansible_collections.pibake.image.plugins.module_utils._oci", None)
    with pytest.raises(PibakeError, match="not available here"):
        _flash.open_source("oci://registry.local:5000/ourbox/os:1.0", pull_dir=str(tmp_path))


def test_oci_reference_is_pulled_then_flashed_from_the_pulled_file(monkeypatch, tmp_path):
    import sys
    import types

    for name in ("PIBAKE_REGISTRY", "PIBAKE_REGISTRY_NAMESPACE", "PIBAKE_REGISTRY_USER", "PIBAKE_REGISTRY_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    calls = []

    def pull(settings, ref_text, dest, **kwargs):
        calls.append((ref_text, dest))
        os.makedirs(os.path.join(dest, "artifact"))
        for name in ("os.img", "os.info", "os.img.sha256"):
            with open(os.path.join(dest, "artifact", name), "wb") as handle:
                handle.write(bytes(4096))
        return {"dest": dest, "files": ["artifact/os.img", "artifact/os.info", "artifact/os.img.sha256"]}

    fake = types.ModuleType("_oci")
    fake.pull = pull
    monkeypatch.setitem(sys.modules, "ansible_collections.pibake.image.plugins.module_utils._oci", fake)
    source = _flash.open_source("oci://registry.local:5000/ourbox/os:1.0", pull_dir=str(tmp_path / "pulled"))
    folder = str(tmp_path / "pulled" / "registry.local_5000_ourbox_os_1.0")
    assert calls == [("registry.local:5000/ourbox/os:1.0", folder)]
    assert source.path == os.path.join(folder, "artifact", "os.img") and source.size == 4096
    assert source.reference == "registry.local:5000/ourbox/os:1.0"


# ----------------------------------------------------------------------------------------------------------- ids


def test_new_ids_for_mbr_keep_partition_suffixes():
    parts = [bd.PartitionEntry(1, 4 * MIB, MIB, "5eed0001-01", "", "0xc", "dos"),
             bd.PartitionEntry(2, 5 * MIB, MIB, "5eed0001-02", "", "0x83", "dos")]
    values = iter([0, 0x5EED0001, 0xABCDEF01])  # 0 and the old id are never chosen
    disk, mapping = _flash.new_ids("dos", "5eed0001", parts, rand=lambda bits: next(values))
    assert disk == "0xabcdef01"
    assert mapping == {"5eed0001-01": "abcdef01-01", "5eed0001-02": "abcdef01-02"}


def test_new_ids_for_gpt_are_fresh_uuids():
    parts = [bd.PartitionEntry(1, MIB, MIB, "11111111-2222-4333-8444-555555555555", "boot", "", "gpt")]
    disk, mapping = _flash.new_ids("gpt", "", parts)
    assert len(disk) == 36 and list(mapping) == ["11111111-2222-4333-8444-555555555555"]
    assert mapping["11111111-2222-4333-8444-555555555555"] != "11111111-2222-4333-8444-555555555555"


def test_new_ids_refuse_other_tables():
    with pytest.raises(PibakeError, match="MBR or GPT"):
        _flash.new_ids("sun", "", [])


def test_replace_partuuids_any_case_whole_values_only():
    mapping = {"5eed0001-02": "abcdef01-02"}
    text = "root=PARTUUID=5EED0001-02 rootwait x=PARTUUID=5eed0001-020 PARTUUID=5eed0001-02\n"
    assert _flash.replace_partuuids(text, mapping) == (
        "root=PARTUUID=abcdef01-02 rootwait x=PARTUUID=5eed0001-020 PARTUUID=abcdef01-02\n"
    )


# ----------------------------------------------------------------------------------------------------------- writing


def fake_disk(path, size):
    """A BlockDevice record for a regular file: the writer and verifier only need a node and sizes."""
    with open(path, "wb") as handle:
        handle.truncate(size)
    return bd.BlockDevice(path=str(path), node=str(path), name="fake", devno=(0, 0), sysfs="", size=size,
                          logical_sector=512, read_only=False, partition_number=0, parent="", dm_uuid="", loop=None)


def image_with_holes(path, size=12 * MIB + 512):
    """Random data at a few places, zeros elsewhere; returns the bytes and the mapped 4 KiB blocks."""
    data = bytearray(size)
    blocks = [(0, 0), (2, 40), (1024, 1279), (size // 4096 - 1, size // 4096)]  # the last range ends mid-block
    for first, last in blocks:
        start, end = first * 4096, min((last + 1) * 4096, size)
        data[start:end] = os.urandom(end - start)
    path.write_bytes(bytes(data))
    return bytes(data), blocks


@pytest.mark.parametrize("compress", [None, "xz", "zstd"])
def test_write_with_bmap_writes_only_mapped_ranges_and_verifies(tmp_path, compress):
    data, blocks = image_with_holes(tmp_path / "os.img")
    (tmp_path / "os.img.bmap").write_bytes(make_bmap(len(data), 4096, blocks, data))
    image = tmp_path / "os.img"
    if compress:
        subprocess.run([compress, "-q", "-1", "-f", str(image)], check=True)
        image = next(p for p in tmp_path.iterdir() if p.suffix in (".xz", ".zst"))
    disk_path = tmp_path / "disk"
    dev = fake_disk(disk_path, 16 * MIB)
    with open(disk_path, "r+b") as handle:  # garbage where the image has holes must survive (not written)
        handle.write(b"\xee" * (16 * MIB))
    source = _flash.open_source(str(image))
    assert source.bmap is not None
    result = _flash.write_image(source, dev)
    assert result.bytes_read == len(data)
    assert result.bytes_written == source.bmap.mapped_bytes < len(data)
    disk = disk_path.read_bytes()
    for first, last in blocks:
        start, end = first * 4096, min((last + 1) * 4096, len(data))
        assert disk[start:end] == data[start:end]
    assert disk[4096:8192] == b"\xee" * 4096  # block 1 is unmapped: untouched
    _flash.verify_spans(dev, result.spans)


def test_write_without_bmap_writes_everything(tmp_path):
    data, dummy_blocks = image_with_holes(tmp_path / "os.img", size=5 * MIB + 1000)
    subprocess.run(["xz", "-q", "-0", "-f", str(tmp_path / "os.img")], check=True)
    disk_path = tmp_path / "disk"
    dev = fake_disk(disk_path, 8 * MIB)
    disk_path.write_bytes(b"\xee" * (8 * MIB))
    source = _flash.open_source(str(tmp_path / "os.img.xz"))
    result = _flash.write_image(source, dev)
    assert result.bytes_written == len(data)
    assert disk_path.read_bytes()[: len(data)] == data
    _flash.verify_spans(dev, result.spans)


def test_verify_notices_a_changed_disk(tmp_path):
    data, blocks = image_with_holes(tmp_path / "os.img")
    dev = fake_disk(tmp_path / "disk", 16 * MIB)
    result = _flash.write_image(_flash.open_source(str(tmp_path / "os.img")), dev)
    with open(tmp_path / "disk", "r+b") as handle:
        handle.seek(3 * 4096)
        handle.write(b"\x00\x01")
    with pytest.raises(PibakeError, match="differ from the image"):
        _flash.verify_spans(dev, result.spans)


def test_image_that_does_not_match_its_bmap_is_caught(tmp_path):
    data, blocks = image_with_holes(tmp_path / "os.img")
    (tmp_path / "os.img.bmap").write_bytes(make_bmap(len(data), 4096, blocks, data))
    corrupt = bytearray(data)
    corrupt[2 * 4096 + 7] ^= 0xFF
    (tmp_path / "os.img").write_bytes(bytes(corrupt))
    dev = fake_disk(tmp_path / "disk", 16 * MIB)
    with pytest.raises(PibakeError, match="do not match the checksum"):
        _flash.write_image(_flash.open_source(str(tmp_path / "os.img")), dev)


def test_truncated_compressed_image_is_caught(tmp_path):
    data, dummy_blocks = image_with_holes(tmp_path / "os.img", size=6 * MIB)
    subprocess.run(["zstd", "-q", "-1", "-f", str(tmp_path / "os.img")], check=True)
    raw = (tmp_path / "os.img.zst").read_bytes()
    (tmp_path / "os.img.zst").write_bytes(raw[: len(raw) // 2])
    dev = fake_disk(tmp_path / "disk", 8 * MIB)
    source = _flash.Source(str(tmp_path / "os.img.zst"), "zstd", len(data), "zstd header")
    with pytest.raises(PibakeError, match="truncated|damaged"):
        _flash.write_image(source, dev)


def test_image_larger_than_announced_is_caught(tmp_path):
    (tmp_path / "os.img").write_bytes(os.urandom(2 * MIB))
    dev = fake_disk(tmp_path / "disk", 4 * MIB)
    source = _flash.Source(str(tmp_path / "os.img"), "none", MIB, "bmap")
    with pytest.raises(PibakeError, match="more than"):
        _flash.write_image(source, dev)


def test_one_image_in_two_forms_flashes_the_raw_one_and_two_images_are_refused():
    raw, packed = "/dl/cubeos-1.0-dev.img", "/dl/cubeos-1.0-dev.img.xz"
    assert _flash.choose_image("reg/os:1", [packed, raw]) == raw
    assert _flash.choose_image("reg/os:1", [packed]) == packed
    with pytest.raises(PibakeError, match="several images"):
        _flash.choose_image("reg/os:1", [packed, "/dl/ourbox-mini-1.0-dev.img.xz"])
