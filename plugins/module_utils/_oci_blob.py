# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Blob sources for uploads: a file, bytes, or a tar stream assembled on the fly from files.

Every source can be read from any offset (so an interrupted chunked upload resumes where the registry says it
stopped) and hashed in one streaming pass; nothing is held in memory beyond one chunk, and the image-form tar
layer is never written to disk.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

READ_SIZE = 4 * 1024 * 1024

# a segment is literal bytes, or (path, length) read from the start of a file
Segment = Union[bytes, Tuple[str, int]]


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class BlobSource:
    """A sequence of segments with a known size; ``digest`` is computed by streaming once, on demand."""

    def __init__(self, segments: Sequence[Segment], label: str):
        self.segments: List[Segment] = list(segments)
        self.label = label
        self.size = sum(len(s) if isinstance(s, bytes) else s[1] for s in self.segments)
        self._digest: Optional[str] = None
        self.file_digests: Dict[str, str] = {}

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = self._hash()
        return self._digest

    def _hash(self) -> str:
        total = hashlib.sha256()
        for seg in self.segments:
            if isinstance(seg, bytes):
                total.update(seg)
                continue
            path, length = seg
            own = hashlib.sha256()
            done = 0
            with open(path, "rb") as fh:
                while done < length:
                    block = fh.read(min(READ_SIZE, length - done))
                    if not block:
                        raise OSError(f"{path} shrank while it was being read")
                    total.update(block)
                    own.update(block)
                    done += len(block)
            self.file_digests[path] = "sha256:" + own.hexdigest()
        return "sha256:" + total.hexdigest()

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes starting at ``offset`` (short only at the end)."""
        out = []
        want = size
        pos = 0
        for seg in self.segments:
            seg_len = len(seg) if isinstance(seg, bytes) else seg[1]
            if offset >= pos + seg_len:
                pos += seg_len
                continue
            start = max(0, offset - pos)
            take = min(seg_len - start, want)
            if isinstance(seg, bytes):
                out.append(seg[start:start + take])
            else:
                with open(seg[0], "rb") as fh:
                    fh.seek(start)
                    data = fh.read(take)
                if len(data) != take:
                    raise OSError(f"{seg[0]} shrank while it was being uploaded")
                out.append(data)
            want -= take
            offset += take
            pos += seg_len
            if want == 0:
                break
        return b"".join(out)

    def chunks(self, start: int, chunk_size: int) -> Iterator[Tuple[int, bytes]]:
        offset = start
        while offset < self.size:
            data = self.read(offset, chunk_size)
            yield offset, data
            offset += len(data)


def bytes_source(data: bytes, label: str) -> BlobSource:
    src = BlobSource([data] if data else [], label)
    src._digest = sha256_digest(data)  # pylint: disable=protected-access
    return src


def file_source(path: str, label: Optional[str] = None) -> BlobSource:
    return BlobSource([(path, os.path.getsize(path))], label or os.path.basename(path))


def tar_source(files: Sequence[Tuple[str, str]], directory: Optional[str] = "artifact", mtime: int = 0,
               label: str = "layer.tar") -> BlobSource:
    """An uncompressed tar with ``directory/`` and each ``(arcname, path)`` below it, deterministic headers.

    Headers carry mode 0644 (0755 for the directory), uid/gid 0 and ``mtime``; PAX records appear only where
    ustar cannot hold a value (files over 8 GiB, long names).
    """

    def header(info: tarfile.TarInfo) -> bytes:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = mtime
        return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")

    segments: List[Segment] = []
    if directory:
        info = tarfile.TarInfo(directory)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        segments.append(header(info))
    for arcname, path in files:
        size = os.path.getsize(path)
        info = tarfile.TarInfo(f"{directory}/{arcname}" if directory else arcname)
        info.size, info.mode = size, 0o644
        segments.append(header(info))
        if size:
            segments.append((path, size))
        pad = (-size) % tarfile.BLOCKSIZE
        if pad:
            segments.append(b"\0" * pad)
    segments.append(b"\0" * (2 * tarfile.BLOCKSIZE))
    return BlobSource(segments, label)
