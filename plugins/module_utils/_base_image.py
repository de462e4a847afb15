# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Resolve ``pibake_base_image`` to a raw ``.img`` in the cache.

Sources:
- ``{type: url, url, sha256}``: download (resumable), verify, decompress; cached by the download's sha256.
- ``{type: path, path, sha256?}``: a local ``.img``, ``.img.xz``, ``.img.zst``, ``.img.gz`` or ``.zip`` holding one
  ``.img``; cached by the given file's sha256.
- ``{type: debian, release, ...}`` (the default): built by ``_debian_base``; cached by its recipe digest.

Cache layout under ``<cache_dir>/base/``: ``<key>.img`` and ``<key>.json`` (sha256 of the raw image, source
description, release). Both are written under temporary names and renamed when whole — the json first, the image
last — so an entry with its image present is complete.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import lzma
import os
import gzip
import re
import subprocess
import tempfile
import time
import zipfile
import zlib
from typing import Callable, Dict, Mapping, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils import _debian_base
from ansible_collections.pibake.image.plugins.module_utils._download import (
    CHUNK,
    download,
    normalize_sha256,
    sha256_file,
)
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._partitions import read_table, require_pi_layout
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress, Ticker
from ansible_collections.pibake.image.plugins.module_utils._run import run

TYPES = ("url", "path", "debian")
_URL_KEYS = ("type", "url", "sha256", "release")
_PATH_KEYS = ("type", "path", "sha256", "release")

MAGIC = (
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zst"),
    (b"PK\x03\x04", "zip"),
    (b"\x1f\x8b", "gz"),
)
ZERO = bytes(CHUNK)
HOLE = 64 << 10  # holes are made at this granularity


def default_cache_dir() -> str:
    return os.environ.get("PIBAKE_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "pibake")


# --- formats -----------------------------------------------------------------------------------------------------

def detect_format(path: str) -> str:
    """``xz``, ``zst``, ``zip``, ``gz`` or ``raw``, by the file's first bytes (not its name)."""
    with open(path, "rb") as handle:
        head = handle.read(8)
    for magic, name in MAGIC:
        if head.startswith(magic):
            return name
    return "raw"


def check_disk_image(path: str, what: str) -> None:
    """Raise unless ``path`` starts with an MBR (with at least one partition) or a GPT."""
    with open(path, "rb") as handle:
        head = handle.read(1024)
    ok = False
    if len(head) >= 512 and head[510:512] == b"\x55\xaa":
        entries = [head[446 + 16 * i: 462 + 16 * i] for i in range(4)]
        ok = any(entry[4] != 0 for entry in entries) or head[512:520] == b"EFI PART"
    if not ok:
        raise PibakeError(
            f"{what} is not a disk image (no MBR or GPT partition table at its start); point pibake_base_image at a "
            f"Raspberry Pi .img (or .img.xz/.img.zst/.zip)."
        )


def check_pi_layout(path: str, what: str) -> None:
    """Raise unless ``path`` has the Raspberry Pi OS layout pibake attaches: MBR, FAT partition 1, ext4 root 2 last.

    Run on a freshly unpacked image before it enters the cache (fix: a GPT image or one without an ext4 root used
    to be cached first and refused only when attached, so a bad input left a whole image copy in the cache).
    """
    try:
        table = read_table(path)
    except PibakeError:
        raise PibakeError(f"{what} has no readable partition table; give a whole-disk Raspberry Pi image.") from None
    require_pi_layout(table, what)
    root = table.get(2)
    if root is None:  # require_pi_layout checked it; keeps the type checker and a changed layout rule honest
        raise PibakeError(f"{what} has no partition 2; give a whole-disk Raspberry Pi image.")
    fstype = run(["blkid", "-p", "-O", str(root.offset), "-o", "value", "-s", "TYPE", path], check=False)
    if fstype.stdout.decode(errors="replace").strip() != "ext4":
        raise PibakeError(f"Partition 2 of {what} holds no ext4 filesystem; pibake customizes images with an ext4 root.")


class _SparseWriter:
    """Write a stream to a file, skipping all-zero blocks (holes) and hashing everything written."""

    def __init__(self, path: str):
        self.handle = open(path, "wb")
        self.size = 0
        self.digest = hashlib.sha256()
        self._pending = b""

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        data = self._pending + data
        whole = len(data) - len(data) % CHUNK
        for pos in range(0, whole, CHUNK):
            self._block(data[pos: pos + CHUNK])
        self._pending = data[whole:]

    def _block(self, block: bytes) -> None:
        if block == ZERO[: len(block)]:
            self.handle.seek(len(block), os.SEEK_CUR)
        else:
            for pos in range(0, len(block), HOLE):
                piece = block[pos: pos + HOLE]
                if piece == ZERO[: len(piece)]:
                    self.handle.seek(len(piece), os.SEEK_CUR)
                else:
                    self.handle.write(piece)
        self.size += len(block)

    def close(self) -> str:
        if self._pending:
            self._block(self._pending)
            self._pending = b""
        self.handle.truncate(self.size)
        self.handle.close()
        return self.digest.hexdigest()


def _pump(read: Callable[[int], bytes], writer: _SparseWriter, ticker: Optional[Ticker]) -> None:
    while True:
        block = read(CHUNK)
        if not block:
            return
        writer.write(block)
        if ticker:
            ticker.update(writer.size)


def unpack(src: str, fmt: str, dest: str, progress: Progress, what: str) -> str:
    """Write the raw image inside ``src`` to ``dest`` (sparse); return its sha256. Corrupt input: PibakeError."""
    writer = _SparseWriter(dest)
    ticker = Ticker(progress, f"unpack {os.path.basename(src)}", None, every_bytes=512 << 20)
    corrupt = f"{what} is a corrupt or truncated {fmt} archive"
    try:
        if fmt == "xz":
            with lzma.open(src, "rb") as stream:
                _pump(stream.read, writer, ticker)
        elif fmt == "gz":
            with gzip.open(src, "rb") as stream:
                _pump(stream.read, writer, ticker)
        elif fmt == "zip":
            with zipfile.ZipFile(src) as archive:
                images = [info for info in archive.infolist()
                          if not info.is_dir() and info.filename.lower().endswith(".img")
                          and not info.filename.startswith("__MACOSX/")]
                if len(images) != 1:
                    raise PibakeError(
                        f"{what} holds {len(images)} .img files ({', '.join(i.filename for i in images[:3]) or 'none'}); "
                        f"give a zip with exactly one .img."
                    )
                with archive.open(images[0]) as stream:
                    _pump(stream.read, writer, ticker)
        elif fmt == "zst":
            _unzstd(src, writer, ticker, corrupt)
        elif fmt == "raw":
            with open(src, "rb") as stream:
                _pump(stream.read, writer, ticker)
        else:  # pragma: no cover - detect_format returns only the above
            raise PibakeError(f"{what} has an unknown format {fmt}; give .img, .img.xz, .img.zst or .zip.")
    except (lzma.LZMAError, EOFError, zipfile.BadZipFile, zlib.error, gzip.BadGzipFile) as err:
        writer.close()
        os.unlink(dest)
        raise PibakeError(f"{corrupt} ({err}); download or copy it again.") from None
    except BaseException:
        writer.close()
        os.unlink(dest)
        raise
    digest = writer.close()
    ticker.update(writer.size, final=True)
    try:
        check_disk_image(dest, what)
    except PibakeError:
        os.unlink(dest)
        raise
    return digest


def _unzstd(src: str, writer: _SparseWriter, ticker: Ticker, corrupt: str) -> None:
    try:
        proc = subprocess.Popen(["zstd", "-d", "-c", "-q", "--no-progress", src], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except FileNotFoundError:
        raise PibakeError("zstd not found, needed to unpack a .zst base image; install zstd (make deps).") from None
    if proc.stdout is None:  # stdout=PIPE always gives a pipe
        proc.kill()
        proc.wait()
        raise PibakeError("zstd started without an output pipe; run the build again.")
    try:
        _pump(proc.stdout.read, writer, ticker)
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
        code = proc.wait()
    if code != 0:
        raise zlib.error(err.splitlines()[-1] if err else f"zstd exit code {code}")


# --- cache -------------------------------------------------------------------------------------------------------

class Cache:
    def __init__(self, root: str, check_layout: bool = False):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.check_layout = check_layout  # refuse images pibake cannot attach before they are cached
        self.base = os.path.join(self.root, "base")
        self.downloads = os.path.join(self.root, "downloads")

    def image(self, key: str) -> str:
        return os.path.join(self.base, key + ".img")

    def meta_path(self, key: str) -> str:
        return os.path.join(self.base, key + ".json")

    def lookup(self, key: str) -> Optional[Dict[str, object]]:
        """The entry's metadata when both files are there, else None."""
        try:
            with open(self.meta_path(key), encoding="utf-8") as handle:
                meta = json.load(handle)
        except (OSError, ValueError):
            return None
        if not os.path.isfile(self.image(key)):
            return None
        return meta

    def tmp(self, key: str, suffix: str) -> str:
        return os.path.join(self.base, f".{key}{suffix}.tmp-{os.getpid()}")

    def commit(self, key: str, tmp_image: str, meta: Dict[str, object]) -> None:
        meta_tmp = self.tmp(key, ".json")
        with open(meta_tmp, "w", encoding="utf-8") as handle:
            json.dump(meta, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(meta_tmp, self.meta_path(key))
        os.replace(tmp_image, self.image(key))

    @contextlib.contextmanager
    def locked(self, key: str, progress: Progress):
        """Hold ``<base>/.<key>.lock`` so that two builds of the same entry run one after the other."""
        os.makedirs(self.base, exist_ok=True)
        with open(os.path.join(self.base, f".{key}.lock"), "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                progress.log(f"cache: another process is making {key}; waiting for it")
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def reap_stale_tmp(self, progress: Progress) -> None:
        """Delete temp files and build folders left by runs whose process is gone."""
        for folder in (self.base, self.downloads):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                match = re.search(r"\.tmp-(\d+)$", name)
                if not match or _pid_alive(int(match.group(1))):
                    continue
                path = os.path.join(folder, name)
                try:
                    if os.path.isdir(path) and not os.path.islink(path):
                        _debian_base.remove_tree(path)
                    else:
                        os.unlink(path)
                    progress.log(f"cache: removed {path} left by an interrupted run")
                except (OSError, PibakeError) as err:
                    progress.log(f"cache: could not remove {path}: {err}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _file_sha256_cached(cache: Cache, path: str, progress: Progress) -> str:
    """sha256 of a local file, remembered by (path, size, mtime, inode) so an unchanged file is hashed once."""
    st = os.stat(path)
    stamp = {"path": os.path.abspath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}
    index = os.path.join(cache.base, ".pathsums",
                         hashlib.sha256(stamp["path"].encode()).hexdigest()[:32] + ".json")
    try:
        with open(index, encoding="utf-8") as handle:
            known = json.load(handle)
        if {k: known.get(k) for k in stamp} == stamp and re.match(r"^[0-9a-f]{64}$", str(known.get("sha256"))):
            return known["sha256"]
    except (OSError, ValueError):
        pass
    digest = sha256_file(path, progress, f"hashing {os.path.basename(path)}")
    os.makedirs(os.path.dirname(index), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(index), prefix=".index-", suffix=f".tmp-{os.getpid()}")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(dict(stamp, sha256=digest), handle)
    os.replace(tmp, index)
    return digest


# --- validation --------------------------------------------------------------------------------------------------

def _check_keys(spec: Mapping[str, object], allowed: Tuple[str, ...], kind: str) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise PibakeError(
            f"pibake_base_image has unknown key(s) {', '.join(unknown)} for type {kind}; use only {', '.join(allowed)}."
        )


def normalize_source(spec: Optional[Mapping[str, object]]) -> Dict[str, object]:
    """Validate ``pibake_base_image``; an empty value means the default ``{type: debian}``."""
    if spec is None or spec == {}:
        spec = {"type": "debian"}
    if not isinstance(spec, Mapping):
        raise PibakeError("pibake_base_image must be a dict such as {type: debian}; fix its value.")
    kind = spec.get("type", "debian")
    if kind not in TYPES:
        raise PibakeError(f"pibake_base_image.type {kind!r} is unknown; use one of {', '.join(TYPES)}.")
    spec = dict(spec, type=kind)
    if kind == "url":
        _check_keys(spec, _URL_KEYS, kind)
        if not spec.get("url"):
            raise PibakeError("pibake_base_image of type url needs a url; add it.")
        if not spec.get("sha256"):
            raise PibakeError("pibake_base_image of type url needs sha256 (the published checksum of the file); add it.")
        spec["sha256"] = normalize_sha256(spec["sha256"], "pibake_base_image.sha256")
        if not re.match(r"^https?://", str(spec["url"])):
            raise PibakeError(f"pibake_base_image.url {spec['url']!r} is not an http(s) URL; fix it.")
    elif kind == "path":
        _check_keys(spec, _PATH_KEYS, kind)
        if not spec.get("path"):
            raise PibakeError("pibake_base_image of type path needs a path; add it.")
        if spec.get("sha256"):
            spec["sha256"] = normalize_sha256(spec["sha256"], "pibake_base_image.sha256")
    else:
        _debian_base.recipe_from_spec(spec)  # validates
    return spec


# --- resolve -----------------------------------------------------------------------------------------------------

def _result(cache: Cache, key: str, meta: Mapping[str, object], built: bool, progress: Progress) -> Dict[str, object]:
    return {
        "path": cache.image(key),
        "sha256": meta.get("sha256"),
        "source": meta.get("source"),
        "release": meta.get("release"),
        "built": built,
        "changed": built,
        "cache_key": key,
        "timings": dict(progress.timings),
    }


def resolve(spec: Optional[Mapping[str, object]], cache_dir: Optional[str] = None,
            progress: Optional[Progress] = None, check_mode: bool = False,
            check_layout: bool = False) -> Dict[str, object]:
    """Return ``{path, sha256, source, release, built, changed, cache_key, timings}`` for ``pibake_base_image``.

    ``check_layout``: refuse a downloaded or local image without the Raspberry Pi OS layout before it is cached.
    """
    progress = progress or Progress()
    spec = normalize_source(spec)
    cache = Cache(cache_dir or default_cache_dir(), check_layout=check_layout)
    if not check_mode:
        os.makedirs(cache.base, exist_ok=True)
        cache.reap_stale_tmp(progress)
    kind = spec["type"]
    if kind == "debian":
        return _resolve_debian(spec, cache, progress, check_mode)
    if kind == "url":
        return _resolve_url(spec, cache, progress, check_mode)
    return _resolve_path(spec, cache, progress, check_mode)


def _planned(cache: Cache, key: str, source: str, release: Optional[str]) -> Dict[str, object]:
    return {"path": cache.image(key), "sha256": None, "source": source, "release": release, "built": False,
            "changed": True, "cache_key": key, "timings": {}}


def _resolve_debian(spec, cache: Cache, progress: Progress, check_mode: bool) -> Dict[str, object]:
    recipe = _debian_base.recipe_from_spec(spec)
    key = recipe.cache_key()
    meta = cache.lookup(key)
    if meta is not None:
        progress.log(f"base image: cached {cache.image(key)}")
        return _result(cache, key, meta, False, progress)
    if check_mode:
        return _planned(cache, key, recipe.describe(), recipe.release)
    with cache.locked(key, progress):
        meta = cache.lookup(key)
        if meta is not None:
            progress.log(f"base image: {cache.image(key)} was built meanwhile by another process")
            return _result(cache, key, meta, False, progress)
        return _build_debian(recipe, key, cache, progress)


def _build_debian(recipe, key: str, cache: Cache, progress: Progress) -> Dict[str, object]:
    tmp_image = cache.tmp(key, ".img")
    workdir = cache.tmp(key, ".work")
    started = time.monotonic()
    try:
        with progress.step("debian base build"):
            _debian_base.build(recipe, tmp_image, workdir, progress)
            with progress.step("checksum"):
                digest = sha256_file(tmp_image, progress, "sha256 of the new base image")
        meta = {
            "sha256": digest,
            "source": recipe.describe(),
            "release": recipe.release,
            "recipe": recipe.as_dict(),
            "recipe_digest": recipe.digest(),
            "identifiers": _debian_base.identifiers(recipe.digest()).__dict__,
            "size": os.path.getsize(tmp_image),
            "build_seconds": round(time.monotonic() - started, 1),
            "created": _now(),
        }
        cache.commit(key, tmp_image, meta)
    finally:
        if os.path.exists(tmp_image):
            os.unlink(tmp_image)
    progress.log(f"base image: built {cache.image(key)} in {time.monotonic() - started:.0f} s")
    return _result(cache, key, meta, True, progress)


def _resolve_url(spec, cache: Cache, progress: Progress, check_mode: bool) -> Dict[str, object]:
    sha = str(spec["sha256"])
    url = str(spec["url"])
    key = sha
    source = f"url {url} (sha256 {sha})"
    meta = cache.lookup(key)
    if meta is not None:
        progress.log(f"base image: cached {cache.image(key)}")
        return _result(cache, key, meta, False, progress)
    if check_mode:
        return _planned(cache, key, source, spec.get("release"))
    with cache.locked(key, progress):
        meta = cache.lookup(key)
        if meta is not None:
            return _result(cache, key, meta, False, progress)
        return _fetch_url(url, sha, key, source, spec, cache, progress)


def _fetch_url(url: str, sha: str, key: str, source: str, spec, cache: Cache, progress: Progress) -> Dict[str, object]:
    os.makedirs(cache.downloads, exist_ok=True)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(url.split("?", 1)[0]))[-80:] or "download"
    fetched = os.path.join(cache.downloads, f"{sha[:16]}-{name}")
    with progress.step("download"):
        download(url, fetched, sha, progress)
    meta = _unpack_into_cache(cache, key, fetched, source, spec.get("release"), progress, f"The download from {url}")
    os.unlink(fetched)  # the raw image in base/ is the cache entry now
    return _result(cache, key, meta, True, progress)


def _resolve_path(spec, cache: Cache, progress: Progress, check_mode: bool) -> Dict[str, object]:
    path = os.path.abspath(os.path.expanduser(str(spec["path"])))
    if not os.path.isfile(path):
        raise PibakeError(f"pibake_base_image.path {path} does not exist or is not a file; fix the path.")
    if check_mode and not os.access(path, os.R_OK):
        raise PibakeError(f"pibake_base_image.path {path} is not readable; fix its permissions.")
    with progress.step("checksum"):
        sha = _file_sha256_cached(cache, path, progress) if not check_mode else sha256_file(path)
    wanted = spec.get("sha256")
    if wanted and wanted != sha:
        raise PibakeError(
            f"{path} has sha256 {sha}, not the {wanted} given in pibake_base_image.sha256; fix the sha256 or the path."
        )
    key = sha
    source = f"path {path} (sha256 {sha})"
    meta = cache.lookup(key)
    if meta is not None:
        progress.log(f"base image: cached {cache.image(key)}")
        return _result(cache, key, meta, False, progress)
    if check_mode:
        return _planned(cache, key, source, spec.get("release"))
    with cache.locked(key, progress):
        meta = cache.lookup(key)
        if meta is not None:
            return _result(cache, key, meta, False, progress)
        meta = _unpack_into_cache(cache, key, path, source, spec.get("release"), progress, path)
    return _result(cache, key, meta, True, progress)


def _unpack_into_cache(cache: Cache, key: str, src: str, source: str, release, progress: Progress,
                       what: str) -> Dict[str, object]:
    fmt = detect_format(src)
    tmp_image = cache.tmp(key, ".img")
    try:
        with progress.step("unpack"):
            digest = unpack(src, fmt, tmp_image, progress, what)
        if cache.check_layout:
            check_pi_layout(tmp_image, what)
        meta = {
            "sha256": digest,
            "source": source,
            "release": release,
            "input_sha256": key,
            "input_format": fmt,
            "size": os.path.getsize(tmp_image),
            "created": _now(),
        }
        cache.commit(key, tmp_image, meta)
    finally:
        if os.path.exists(tmp_image):
            os.unlink(tmp_image)
    return meta
