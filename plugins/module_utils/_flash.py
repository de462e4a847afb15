# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Write a disk image to a whole disk safely: refuse the wrong disk, write only mapped blocks, verify, re-identify.

Flow of :func:`flash`:

1. resolve the source (``.img``, ``.img.xz``, ``.img.zst``, ``.img.gz`` by magic bytes, or an OCI reference pulled
   through ``_oci.pull``) and its bmap (``<image>.bmap`` or ``<image without .xz/.zst/.gz>.bmap``);
2. refuse unsafe targets (``_blockdev``): not a whole block device, the running root disk, anything in use, a disk
   holding the ``OURBOX_DATA`` filesystem on any partition (probed by offset), a disk smaller than the image;
3. without ``confirm`` (or in check mode) stop there and describe what would happen;
4. write: the decompressor runs as its own process (``xz``/``zstd``/``gzip -dc``) feeding a reader thread, the main
   thread hashes and writes with O_DIRECT from page-aligned buffers, only the bmap's ranges (all of the image
   without a bmap), checking each range against the bmap's checksum as it passes; the device stays open
   O_EXCL (nobody can mount it meanwhile) and flock()ed (udev leaves it alone) until the data is fsync()ed;
5. read back every written range with O_DIRECT (from the disk, not the page cache) and compare its sha256;
6. optionally give the disk a fresh identifier (MBR disk id, or GPT disk and partition GUIDs), after rewriting
   ``root=PARTUUID=`` in the FAT's ``cmdline.txt`` (mtools) and the PARTUUIDs in the root's ``/etc/fstab``
   (debugfs), so that two disks flashed from one image never share PARTUUIDs.

Why not ``bmaptool copy``: it cannot read the disk back (it checks the image's checksums while reading the
source, not what landed on the disk), it opens the device itself so the O_EXCL claim would have to be dropped
between the checks and the write, and its progress goes to a terminal, not to pibake's progress file. The bmap
format it writes (v1.x with SHA-1, v2.x with ``ChecksumType``) is what :func:`parse_bmap` reads.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import queue
import re
import secrets
import shutil
import subprocess
import threading
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _blockdev as bd
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

DATA_LABEL = "OURBOX_DATA"
CHUNK = 4 << 20  # bytes per read/write; a multiple of every sector and bmap block size in use
BUFFERS = 4  # chunks in flight between the decompressor thread and the writer
SEGMENT = 64 << 20  # without a bmap, the image is checked back in segments of this size
F_SETPIPE_SZ = 1031
BLKRRPART = 0x125F

MAGIC = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x1f\x8b", "gzip"),
)
DECOMPRESS = {
    "xz": ["xz", "--decompress", "--stdout", "--threads=0"],
    "zstd": ["zstd", "--decompress", "--stdout", "--quiet", "--long=31"],
    "gzip": ["gzip", "--decompress", "--stdout"],
}
SUFFIXES = (".xz", ".zst", ".zstd", ".gz")
IMAGE_NAME = re.compile(r"\.img(\.(xz|zst|zstd|gz))?$")
OCI_REF = re.compile(
    r"^(?:localhost|[a-z0-9-]+(?:\.[a-z0-9-]+)+)(?::[0-9]+)?/[a-z0-9._/-]+"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}(?:@sha256:[0-9a-f]{64})?|@sha256:[0-9a-f]{64})$"
)

Reporter = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


# --------------------------------------------------------------------------------------------------------------
# bmap


@dataclass(frozen=True)
class BmapRange:
    start: int  # bytes, inclusive
    end: int  # bytes, exclusive (clipped to the image size)
    checksum: str  # hex, "" when the bmap has none


@dataclass(frozen=True)
class Bmap:
    version: str
    image_size: int
    block_size: int
    mapped_blocks: int
    checksum_type: str
    ranges: List[BmapRange]

    @property
    def mapped_bytes(self) -> int:
        return sum(r.end - r.start for r in self.ranges)


def _checksum_field(raw: bytes):
    """The bmap's own checksum element: (tag, match) with group 1 the hex value, or None."""
    for tag in (b"BmapFileChecksum", b"BmapFileSHA1"):
        match = re.search(rb"<" + tag + rb">\s*([0-9a-fA-F]+)\s*</" + tag + rb">", raw)
        if match:
            return tag.decode(), match
    return None


def parse_bmap(raw: bytes, where: str = "the bmap") -> Bmap:
    """Parse a bmap file (bmap-tools format 1.x or 2.x) and check its own checksum."""
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as err:
        raise PibakeError(f"{where} is not valid XML ({err}); regenerate it with `bmaptool create` or pass use_bmap=false.") from None
    if root.tag != "bmap":
        raise PibakeError(f"{where} is not a bmap file; regenerate it with `bmaptool create` or pass use_bmap=false.")
    version = root.get("version", "")
    major = version.split(".", 1)[0]
    if major not in ("1", "2"):
        raise PibakeError(f"{where} has bmap format version {version or '?'}, which pibake cannot read; use bmaptool 3 or pass use_bmap=false.")

    def number(tag: str) -> int:
        node = root.find(tag)
        try:
            return int((node.text or "").strip()) if node is not None else -1
        except ValueError:
            return -1

    image_size, block_size = number("ImageSize"), number("BlockSize")
    if image_size < 0 or block_size <= 0:
        raise PibakeError(f"{where} lacks ImageSize or BlockSize; regenerate it with `bmaptool create`.")
    checksum_type = "sha1" if version.startswith("1.") and root.find("ChecksumType") is None else (
        (root.findtext("ChecksumType") or "sha256").strip().lower()
    )
    if checksum_type not in hashlib.algorithms_available:
        raise PibakeError(f"{where} uses checksum type {checksum_type}, which this Python cannot compute; pass use_bmap=false.")
    found = _checksum_field(raw)
    if found:
        # The checksum covers the file with its own value replaced by as many ASCII zeros.
        tag, match = found
        zeroed = raw[: match.start(1)] + b"0" * (match.end(1) - match.start(1)) + raw[match.end(1):]
        digest = hashlib.new("sha1" if tag == "BmapFileSHA1" else checksum_type, zeroed).hexdigest()
        if digest != match.group(1).decode().lower():
            raise PibakeError(f"{where} fails its own checksum (it was altered or truncated); download it again or pass use_bmap=false.")
    ranges = []
    block_map = root.find("BlockMap")
    for node in block_map.findall("Range") if block_map is not None else []:
        span = (node.text or "").strip()
        first, dummy_sep, last = span.partition("-")
        try:
            first_block, last_block = int(first), int(last or first)
        except ValueError:
            raise PibakeError(f"{where} has a malformed range {span!r}; regenerate it with `bmaptool create`.") from None
        start, end = first_block * block_size, min((last_block + 1) * block_size, image_size)
        if last_block < first_block or start >= image_size:
            raise PibakeError(f"{where} has a range {span!r} outside the image; regenerate it with `bmaptool create`.")
        ranges.append(BmapRange(start, end, (node.get("chksum") or node.get("sha1") or "").lower()))
    ranges.sort(key=lambda r: r.start)
    for before, after in zip(ranges, ranges[1:]):
        if after.start < before.end:
            raise PibakeError(f"{where} has overlapping ranges; regenerate it with `bmaptool create`.")
    return Bmap(version, image_size, block_size, number("MappedBlocksCount"), checksum_type, ranges)


def bmap_candidates(image: str) -> List[str]:
    """Where a bmap for ``image`` may sit: os.img.xz → os.img.xz.bmap, os.img.bmap, os.bmap."""
    names = [image + ".bmap"]
    base = image
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            names.append(base + ".bmap")
            break
    if base.endswith(".img"):
        names.append(base[:-4] + ".bmap")
    return names


def find_bmap(image: str) -> Optional[str]:
    for candidate in bmap_candidates(image):
        if os.path.isfile(candidate):
            return candidate
    return None


# --------------------------------------------------------------------------------------------------------------
# the source image


@dataclass
class Source:
    path: str
    compression: str  # none, xz, zstd, gzip
    size: int  # uncompressed bytes
    size_from: str  # how the size is known
    bmap: Optional[Bmap] = None
    bmap_path: Optional[str] = None
    reference: str = ""  # the OCI reference when pulled


def detect_compression(path: str) -> str:
    with open(path, "rb") as handle:
        head = handle.read(8)
    for magic, kind in MAGIC:
        if head.startswith(magic):
            return kind
    return "none"


def _xz_size(path: str) -> Optional[int]:
    proc = run(["xz", "--robot", "--list", path], check=False)
    if proc.returncode != 0:
        return None
    for line in text(proc).splitlines():
        fields = line.split("\t")
        if fields[0] == "totals" and len(fields) > 4:
            return int(fields[4])
    return None


def _zstd_size(path: str) -> Optional[int]:
    proc = run(["zstd", "--list", "-v", path], check=False)
    if proc.returncode != 0:
        return None
    match = re.search(r"Decompressed Size:.*\((\d+) B\)", text(proc))
    return int(match.group(1)) if match else None


def uncompressed_size(path: str, compression: str) -> Optional[int]:
    if compression == "none":
        return os.path.getsize(path)
    if compression == "xz":
        return _xz_size(path)
    if compression == "zstd":
        return _zstd_size(path)
    return None  # gzip only stores the size modulo 4 GiB


class _Stream:
    """The uncompressed image as a file descriptor: the file itself, or the stdout of a decompressor process."""

    def __init__(self, source: Source):
        self.source = source
        self.proc: Optional[subprocess.Popen] = None
        if source.compression == "none":
            self.fd = os.open(source.path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            except OSError:
                pass
        else:
            argv = DECOMPRESS[source.compression] + [source.path]
            if shutil.which(argv[0]) is None:
                raise PibakeError(f"{argv[0]} is needed to read {source.path}; install it (Debian package xz-utils, zstd or gzip).")
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.fd = self.proc.stdout.fileno()
            try:
                fcntl.fcntl(self.fd, F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass

    def close(self, complete: bool) -> None:
        """Close; with ``complete`` (the whole stream was read) a decompressor failure becomes an error."""
        if self.proc is None:
            os.close(self.fd)
            return
        if not complete:
            self.proc.kill()
        self.proc.stdout.close()
        err = self.proc.stderr.read().decode(errors="replace").strip()
        self.proc.stderr.close()
        code = self.proc.wait()
        if complete and code != 0:
            detail = err.splitlines()[-1] if err else f"exit code {code}"
            raise PibakeError(
                f"Decompressing {self.source.path} failed ({detail}); the file is damaged or truncated, download it again."
            )


def _fill(fd: int, view: memoryview) -> int:
    """Read until ``view`` is full or the stream ends; returns the byte count."""
    got = 0
    while got < len(view):
        count = os.readv(fd, [view[got:]])
        if count == 0:
            break
        got += count
    return got


def count_bytes(source: Source) -> int:
    """Decompress once just to learn the size (gzip, or zstd frames without a content size)."""
    stream = _Stream(source)
    total, complete = 0, False
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        while True:
            count = _fill(stream.fd, view)
            total += count
            if count < CHUNK:
                break
        complete = True
    finally:
        stream.close(complete)
    return total


def is_oci_reference(image: str) -> bool:
    if image.startswith("oci://"):
        return True
    return not os.path.exists(image) and bool(OCI_REF.match(image))


def pull_oci(reference: str, dest: str, report: Reporter = _quiet) -> str:
    """Pull a pibake OS artifact (either published form) with ``_oci.pull`` into ``dest`` and return the image in it.

    Registry settings come from the environment (``PIBAKE_REGISTRY``, ``PIBAKE_REGISTRY_USER``...), as for
    ``playbooks/pull.yml``; ``_oci.pull`` verifies every blob digest and the pulled ``*.sha256`` files.
    """
    try:
        from ansible_collections.pibake.image.plugins.module_utils._oci import pull  # needs the oras SDK
        from ansible_collections.pibake.image.plugins.module_utils._oci_ref import RegistrySettings
    except ImportError as err:
        raise PibakeError(
            f"Flashing straight from the OCI reference {reference} is not available here ({err}); install the "
            "collection's Python requirements (oras), or pull the artifact first and pass the path of its .img.xz."
        ) from None
    folder = os.path.join(dest, re.sub(r"[^A-Za-z0-9_.-]+", "_", reference))
    report(f"pulling {reference} into {folder}")
    result = pull(RegistrySettings.from_sources({}), reference, folder)
    found = []
    for base, _dirs, files in os.walk(result.get("dest") or folder):
        found += [os.path.join(base, name) for name in sorted(files) if IMAGE_NAME.search(name)]
    if not found:
        raise PibakeError(f"The artifact {reference} holds no .img, .img.xz or .img.zst file; check that it is a pibake OS artifact.")
    return choose_image(reference, found)


def choose_image(reference: str, found: List[str]) -> str:
    """The one image of a release; one image in several forms (raw next to compressed) gives the raw one.

    The raw ``.img`` writes fastest (nothing to decompress) and is the same bytes the compressed one holds.
    """
    stems = {IMAGE_NAME.sub("", os.path.basename(path)) for path in found}
    if len(stems) > 1:
        raise PibakeError(f"The artifact {reference} holds several images ({', '.join(map(os.path.basename, found))}); pull it and pass the one to flash.")
    return sorted(found, key=lambda path: len(os.path.basename(path)))[0]


def open_source(image: str, bmap: Optional[str] = None, use_bmap: bool = True, pull_dir: Optional[str] = None,
                report: Reporter = _quiet) -> Source:
    """Resolve ``image`` to a readable file with its compression, uncompressed size and bmap."""
    reference = ""
    if is_oci_reference(image):
        reference = image[len("oci://"):] if image.startswith("oci://") else image
        folder = pull_dir or os.path.join(
            os.environ.get("PIBAKE_CACHE_DIR") or os.path.expanduser("~/.cache/pibake"), "downloads", "flash"
        )
        image = pull_oci(reference, folder, report)
    if not os.path.exists(image):
        raise PibakeError(f"The image {image} does not exist; give the path of an .img, .img.xz or .img.zst file.")
    if not os.path.isfile(image):
        raise PibakeError(f"The image {image} is not a regular file; give the path of an .img, .img.xz or .img.zst file.")
    compression = detect_compression(image)
    size = uncompressed_size(image, compression)
    size_from = "file size" if compression == "none" else f"{compression} header"
    bmap_obj, bmap_path = None, None
    if use_bmap:
        bmap_path = bmap or find_bmap(image)
        if bmap and not os.path.isfile(bmap):
            raise PibakeError(f"The bmap {bmap} does not exist; fix the path, or leave bmap unset to look next to the image.")
        if bmap_path:
            with open(bmap_path, "rb") as handle:
                bmap_obj = parse_bmap(handle.read(), bmap_path)
    if bmap_obj is not None:
        if size is not None and size != bmap_obj.image_size:
            raise PibakeError(
                f"The bmap {bmap_path} describes an image of {bmap_obj.image_size} bytes but {image} holds {size}; "
                "they do not belong together, so fetch the matching bmap or pass use_bmap=false."
            )
        if size is None:
            size, size_from = bmap_obj.image_size, "bmap"
    if size is None:
        report(f"measuring the uncompressed size of {image}")
        size, size_from = count_bytes(Source(image, compression, 0, "")), "decompressed once"
    return Source(image, compression, size, size_from, bmap_obj, bmap_path if bmap_obj else None, reference)


# --------------------------------------------------------------------------------------------------------------
# target checks


@dataclass
class Target:
    dev: bd.BlockDevice
    contents: bd.Contents


def check_target(device: str, source: Optional[Source] = None) -> Target:
    """Every refusal of the flash rules, each as one PibakeError sentence; returns what was found."""
    dev = bd.inspect(device)
    bd.require_whole_disk(dev)
    if source is not None and dev.loop is not None and dev.loop.backing_file:
        try:
            same = os.path.samefile(dev.loop.backing_file, source.path)
        except OSError:
            same = False
        if same:
            raise PibakeError(f"{device} is a loop device over the image {source.path} itself; give a different disk.")
    # The DATA rule comes first: its refusal is the one that must not be "fixed" by unmounting and retrying.
    found = bd.contents(dev)
    for place in found.with_label(DATA_LABEL):
        raise PibakeError(
            f"{device} holds the {DATA_LABEL} filesystem ({place.describe(device)}), which is the DATA disk and must "
            "never be flashed; give the SYSTEM disk instead (compare `lsblk -o NAME,SIZE,MODEL,SERIAL,LABEL`)."
        )
    for place in found.ambivalent():
        raise PibakeError(
            f"{place.describe(device)} carries conflicting filesystem signatures, so pibake cannot tell whether it "
            f"is the {DATA_LABEL} disk; inspect it with `wipefs --no-act`, and clear it by hand if it is not."
        )
    bd.require_not_root(dev)
    bd.require_unused(dev)
    if source is not None and dev.size < source.size:
        raise PibakeError(
            f"{device} holds {bd.human(dev.size)} ({dev.size} bytes) but the image needs {bd.human(source.size)} "
            f"({source.size} bytes); use a disk at least that large."
        )
    return Target(dev, found)


# --------------------------------------------------------------------------------------------------------------
# writing


class _Writer:
    """The target disk opened O_EXCL (no mount can happen meanwhile) and flock()ed (udev waits), written with
    O_DIRECT where offsets and lengths are sector-aligned and through a plain descriptor for anything else."""

    def __init__(self, node: str, sector: int):
        self.node = node
        self.sector = sector
        self.direct = True
        flags = os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC
        try:
            self.fd = os.open(node, flags | os.O_DIRECT)
        except OSError as err:
            if err.errno != errno.EINVAL:
                raise self._error(err) from None
            self.fd, self.direct = os.open(node, flags), False
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            raise PibakeError(f"{node} is locked by another program (a partitioning tool or udev); wait for it and try again.") from None
        self.plain = -1

    def _error(self, err: OSError) -> PibakeError:
        if err.errno == errno.EBUSY:
            return PibakeError(f"{self.node} became busy (something mounted or claimed it); stop that and flash again.")
        return PibakeError(f"Writing {self.node} failed ({err.strerror}); check the disk and its connection, then flash again.")

    def _plain_fd(self) -> int:
        if self.plain < 0:
            self.plain = os.open(self.node, os.O_WRONLY | os.O_CLOEXEC)
        return self.plain

    def write(self, view: memoryview, offset: int) -> None:
        try:
            if self.direct and offset % self.sector == 0:
                aligned = len(view) - len(view) % self.sector
                if aligned:
                    self._pwrite(self.fd, view[:aligned], offset)
                view, offset = view[aligned:], offset + aligned
            if len(view):
                self._pwrite(self._plain_fd(), view, offset)
        except OSError as err:
            raise self._error(err) from None

    @staticmethod
    def _pwrite(fd: int, view: memoryview, offset: int) -> None:
        while len(view):
            count = os.pwrite(fd, view, offset)
            view, offset = view[count:], offset + count

    def sync(self) -> None:
        try:
            if self.plain >= 0:
                os.fsync(self.plain)
            os.fsync(self.fd)
        except OSError as err:
            raise self._error(err) from None

    def close(self) -> None:
        if self.plain >= 0:
            os.close(self.plain)
            self.plain = -1
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _aligned_buffer(size: int) -> mmap.mmap:
    """Anonymous mmap: page-aligned, as O_DIRECT wants."""
    return mmap.mmap(-1, size)


@dataclass
class _Span:
    start: int
    end: int
    expected: str
    algorithm: str
    digest: str = ""


def _spans(source: Source) -> List[_Span]:
    if source.bmap is not None:
        return [_Span(r.start, r.end, r.checksum, source.bmap.checksum_type) for r in source.bmap.ranges]
    return [_Span(start, min(start + SEGMENT, source.size), "", "sha256") for start in range(0, source.size, SEGMENT)]


class _Pump(threading.Thread):
    """Reads the stream into free buffers while the main thread writes the previous ones."""

    def __init__(self, fd: int, buffers: List[mmap.mmap]):
        super().__init__(daemon=True, name="pibake-flash-reader")
        self.fd = fd
        self.free: "queue.Queue[Optional[mmap.mmap]]" = queue.Queue()
        self.full: "queue.Queue[object]" = queue.Queue()
        for buf in buffers:
            self.free.put(buf)

    def run(self) -> None:
        try:
            while True:
                buf = self.free.get()
                if buf is None:
                    return
                count = _fill(self.fd, memoryview(buf))
                self.full.put((buf, count))
                if count < len(buf):
                    self.full.put(None)
                    return
        except BaseException as err:  # handed to the main thread
            self.full.put(err)


@dataclass
class WriteResult:
    bytes_read: int
    bytes_written: int
    seconds: float
    spans: List[_Span] = field(default_factory=list)


def write_image(source: Source, dev: bd.BlockDevice, ticker=None) -> WriteResult:
    """Stream the image to the disk, writing only the spans; returns the spans with their computed digests."""
    spans = _spans(source)
    started = time.monotonic()
    writer = _Writer(dev.node, dev.logical_sector)  # claim the disk first: nothing else may open it from now on
    stream: Optional[_Stream] = None
    pump: Optional[_Pump] = None
    complete = False
    pos = written = index = 0
    hashers: Dict[int, "hashlib._Hash"] = {}
    try:
        stream = _Stream(source)
        pump = _Pump(stream.fd, [_aligned_buffer(CHUNK) for dummy in range(BUFFERS)])
        pump.start()
        while True:
            item = pump.full.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            buf, count = item
            chunk_end = pos + count
            if chunk_end > source.size:
                raise PibakeError(
                    f"{source.path} holds more than the {source.size} bytes expected ({source.size_from}); the image and "
                    "its bmap do not match, so fetch them again."
                )
            view = memoryview(buf)
            while index < len(spans) and spans[index].start < chunk_end:
                span = spans[index]
                lo, hi = max(span.start, pos), min(span.end, chunk_end)
                piece = view[lo - pos:hi - pos]
                hasher = hashers.setdefault(index, hashlib.new(span.algorithm))
                hasher.update(piece)
                writer.write(piece, lo)
                written += hi - lo
                if hi < span.end:
                    break
                span.digest = hashers.pop(index).hexdigest()
                if span.expected and span.digest != span.expected:
                    raise PibakeError(
                        f"Bytes {span.start}-{span.end} of {source.path} do not match the checksum in "
                        f"{source.bmap_path}; the image or its bmap is corrupt, so download them again and reflash "
                        f"(the disk {dev.path} now holds a partial image)."
                    )
                index += 1
            pos = chunk_end
            pump.free.put(buf)
            if ticker is not None:
                ticker.update(pos)
        if pos != source.size:
            raise PibakeError(
                f"{source.path} ended after {pos} of the {source.size} bytes expected ({source.size_from}); the file is "
                f"truncated or does not match its bmap, so download it again (the disk {dev.path} holds a partial image)."
            )
        complete = True
        writer.sync()
    finally:
        if pump is not None:
            pump.free.put(None)
        try:
            if stream is not None:
                stream.close(complete)
        finally:
            writer.close()
        if pump is not None:
            pump.join(timeout=5)
    if ticker is not None and pos != source.size:
        ticker.update(pos, final=True)
    return WriteResult(pos, written, time.monotonic() - started, spans)


def clear_stale_gpt_backup(dev: bd.BlockDevice, image_size: int) -> bool:
    """Zero the disk's last sector (an old GPT's backup header) when it lies beyond the image."""
    last = dev.size - dev.logical_sector
    if last < image_size:
        return False
    fd = os.open(dev.node, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.pwrite(fd, b"\0" * dev.logical_sector, last)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


# --------------------------------------------------------------------------------------------------------------
# read-back verification


def verify_spans(dev: bd.BlockDevice, spans: List[_Span], ticker=None) -> float:
    """Read every span back from the disk with O_DIRECT and compare digests; returns seconds taken."""
    started = time.monotonic()
    sector = dev.logical_sector
    try:
        fd = os.open(dev.node, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECT)
        direct = True
    except OSError:
        fd, direct = os.open(dev.node, os.O_RDONLY | os.O_CLOEXEC), False
    buf = _aligned_buffer(CHUNK)
    view = memoryview(buf)
    done = 0
    try:
        if not direct:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        for span in spans:
            hasher = hashlib.new(span.algorithm)
            offset = span.start
            while offset < span.end:
                start = offset - offset % sector  # O_DIRECT reads whole sectors
                skip = offset - start
                take = min(CHUNK - skip, span.end - offset)
                length = min(-(-(skip + take) // sector) * sector, dev.size - start)
                got = os.preadv(fd, [view[:length]], start)
                if got < skip + take:
                    raise PibakeError(f"Reading {dev.path} back stopped at byte {start + got}; check the disk and its connection.")
                hasher.update(view[skip:skip + take])
                offset += take
                done += take
                if ticker is not None:
                    ticker.update(done)
            expected = span.expected or span.digest
            if hasher.hexdigest() != expected:
                raise PibakeError(
                    f"Bytes {span.start}-{span.end} read back from {dev.path} differ from the image; the disk is failing "
                    "or was written by something else meanwhile, so flash again or replace the disk."
                )
    except OSError as err:
        raise PibakeError(f"Reading {dev.path} back failed ({err.strerror}); check the disk and its connection.") from None
    finally:
        del view
        buf.close()
        os.close(fd)
    return time.monotonic() - started


# --------------------------------------------------------------------------------------------------------------
# fresh disk identifier


def new_ids(label: str, old_disk_id: str, parts: List[bd.PartitionEntry], rand=secrets.randbits):
    """(new disk id for sfdisk, {old PARTUUID: new PARTUUID}) for an MBR (dos) or GPT table."""
    if label == "dos":
        old = int(old_disk_id, 16) if old_disk_id else 0
        new = 0
        while new in (0, old):
            new = rand(32)
        mapping = {p.uuid.lower(): f"{new:08x}{p.uuid[8:].lower()}" for p in parts if len(p.uuid) >= 9}
        return f"0x{new:08x}", mapping
    if label == "gpt":
        mapping = {p.uuid.lower(): str(uuidlib.UUID(int=rand(128), version=4)) for p in parts if p.uuid}
        return str(uuidlib.UUID(int=rand(128), version=4)).upper(), mapping
    raise PibakeError(f"A fresh disk identifier needs an MBR or GPT partition table, and this image has {label or 'none'}; pass new_disk_id=false.")


def replace_partuuids(content: str, mapping: Dict[str, str]) -> str:
    """Rewrite every ``PARTUUID=<old>`` (any case) to the new value."""
    for old, new in mapping.items():
        content = re.sub(r"(?i)(PARTUUID=)" + re.escape(old) + r"(?![0-9a-fA-F-])", lambda m: m.group(1) + new, content)
    return content


def _sfdisk_table(node: str) -> Dict:
    import json

    proc = run(["sfdisk", "--json", node], check=False)
    if proc.returncode != 0:
        raise PibakeError(f"The image written to {node} has no partition table sfdisk can read; pass new_disk_id=false.")
    return json.loads(text(proc))["partitiontable"]


def refresh_disk_id(node: str, rand=secrets.randbits) -> Dict[str, object]:
    """Give the disk a fresh identifier and rewrite the PARTUUIDs in cmdline.txt and /etc/fstab to match."""
    from ansible_collections.pibake.image.plugins.module_utils import _ext4, _fatfs

    table = _sfdisk_table(node)
    label = table.get("label", "")
    parts = bd.partitions(node)
    new_disk, mapping = new_ids(label, str(table.get("id", "")).lower().replace("0x", ""), parts, rand)
    files: List[str] = []
    for part in parts:
        if _fatfs.is_fat(node, part.offset):
            old = _fatfs.read_file(node, part.offset, "cmdline.txt")
            if old is not None:
                new = replace_partuuids(old.decode("utf-8", errors="surrogateescape"), mapping).encode("utf-8", errors="surrogateescape")
                if new != old:
                    _fatfs.write_file(node, part.offset, "cmdline.txt", new)
                    files.append(f"partition {part.number}: cmdline.txt")
        elif _ext4.is_ext(node, part.offset):
            old = _ext4.read_file(node, part.offset, "/etc/fstab")
            if old is not None:
                new = replace_partuuids(old.decode("utf-8", errors="surrogateescape"), mapping).encode("utf-8", errors="surrogateescape")
                if new != old:
                    _ext4.write_file(node, part.offset, "/etc/fstab", new)
                    if _ext4.read_file(node, part.offset, "/etc/fstab") != new:
                        raise PibakeError(f"Rewriting /etc/fstab in partition {part.number} of {node} did not stick; flash again.")
                    files.append(f"partition {part.number}: /etc/fstab")
    quiet = ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet"]
    run(quiet + ["--disk-id", node, new_disk], what=f"Setting the disk identifier of {node}")
    if label == "gpt":
        for part in parts:
            if part.uuid.lower() in mapping:
                run(quiet + ["--part-uuid", node, str(part.number), mapping[part.uuid.lower()]],
                    what=f"Setting the PARTUUID of partition {part.number} of {node}")
    now = {p.uuid.lower() for p in bd.partitions(node)}
    if now != set(mapping.values()):
        raise PibakeError(f"The new PARTUUIDs of {node} did not stick (found {sorted(now)}); flash again.")
    fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return {"label": label, "old": table.get("id", ""), "new": new_disk, "partuuids": mapping, "files": files}


def tell_kernel(node: str) -> None:
    """Ask the kernel to re-read the partition table (loop devices without partscan refuse; that is fine) and let
    udev catch up, so /dev/disk/by-* links show the new disk."""
    try:
        fd = os.open(node, os.O_RDONLY | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, BLKRRPART)
        finally:
            os.close(fd)
    except OSError:
        pass
    if shutil.which("udevadm") and os.path.isdir("/run/udev"):
        run(["udevadm", "settle", "--timeout=10"], check=False)


# --------------------------------------------------------------------------------------------------------------
# the whole operation


def describe(source: Source, target: Target, *, verify: bool, new_disk_id: bool) -> List[str]:
    dev = target.dev
    steps = []
    what = "the whole image"
    if source.bmap is not None:
        share = source.bmap.mapped_bytes * 100 // max(1, source.size)
        what = f"the {bd.human(source.bmap.mapped_bytes)} ({share} %) the bmap {source.bmap_path} marks as used"
    reading = "read" if source.compression == "none" else f"decompress ({source.compression})"
    steps.append(f"{reading} {source.path} ({bd.human(source.size)} uncompressed) and write {what} to {dev.path} ({bd.human(dev.size)})")
    existing = target.contents.table.pttype or target.contents.table.type
    if existing:
        steps.append(f"replace what {dev.path} holds now ({existing}, {len(target.contents.places) - 1} partition(s))")
    if target.contents.table.pttype == "gpt" and dev.size - dev.logical_sector >= source.size:
        steps.append("zero the disk's last sector so the old GPT's backup header cannot come back")
    if verify:
        steps.append("read every written range back from the disk and compare its checksum")
    if new_disk_id:
        steps.append("give the disk a fresh identifier and rewrite root=PARTUUID= in cmdline.txt and /etc/fstab to match")
    return steps


def flash(image: str, device: str, *, confirm: bool = False, check_mode: bool = False, bmap: Optional[str] = None,
          use_bmap: bool = True, verify: bool = True, new_disk_id: bool = False, pull_dir: Optional[str] = None,
          progress=None) -> Dict[str, object]:
    """Check, and when confirmed write, verify and re-identify. Returns the module result (without ``changed``
    semantics beyond the ``changed`` key)."""
    log = progress.log if progress is not None else _quiet
    source = open_source(image, bmap, use_bmap, pull_dir, log)
    target = check_target(device, source)
    dev = target.dev
    steps = describe(source, target, verify=verify, new_disk_id=new_disk_id)
    result: Dict[str, object] = {
        "device": dev.path,
        "device_node": dev.node,
        "device_size": dev.size,
        "image": source.path,
        "reference": source.reference,
        "image_size": source.size,
        "compression": source.compression,
        "bmap": source.bmap_path,
        "mapped_bytes": source.bmap.mapped_bytes if source.bmap else source.size,
        "steps": steps,
        "flashed": False,
        "verified": False,
        "bytes_written": 0,
        "seconds": {},
        "disk_id": {},
        "warnings": [],
    }
    if dev.logical_sector != 512:
        result["warnings"].append(
            f"{dev.path} has {dev.logical_sector}-byte sectors; images made for 512-byte sectors (all Raspberry Pi "
            "images) will not boot from it."
        )
    if not confirm:
        result["changed"] = False
        result["msg"] = (
            f"Nothing was written: {dev.path} passed every safety check; pass confirm=true "
            f"(playbook: -e flash_confirm=true) to {steps[0]}."
        )
        return result
    if check_mode:
        result["changed"] = True
        result["msg"] = f"Check mode: would {'; '.join(steps)}."
        return result

    from ansible_collections.pibake.image.plugins.module_utils._progress import Ticker

    started = time.monotonic()
    seconds: Dict[str, float] = {}
    log(f"flash: {'; '.join(steps)}")
    ticker = Ticker(progress, f"writing {dev.path}", source.size) if progress is not None else None
    written = write_image(source, dev, ticker)
    seconds["write"] = round(written.seconds, 2)
    result["bytes_written"] = written.bytes_written
    result["flashed"] = True
    result["changed"] = True
    if target.contents.table.pttype == "gpt":
        clear_stale_gpt_backup(dev, source.size)
    if verify:
        ticker = Ticker(progress, f"verifying {dev.path}", written.bytes_written) if progress is not None else None
        seconds["verify"] = round(verify_spans(dev, written.spans, ticker), 2)
        result["verified"] = True
    if new_disk_id:
        step = time.monotonic()
        result["disk_id"] = refresh_disk_id(dev.node)
        seconds["disk_id"] = round(time.monotonic() - step, 2)
    tell_kernel(dev.node)
    seconds["total"] = round(time.monotonic() - started, 2)
    result["seconds"] = seconds
    rate = source.size / max(written.seconds, 1e-6) / (1 << 20)
    result["msg"] = (
        f"Wrote {bd.human(written.bytes_written)} of {bd.human(source.size)} image to {dev.path} in {seconds['write']} s "
        f"({rate:.0f} MiB/s of image){', verified' if verify else ''}"
        f"{', new disk id ' + str(result['disk_id'].get('new')) if new_disk_id else ''}."
    )
    log(f"flash: {result['msg']}")
    return result
