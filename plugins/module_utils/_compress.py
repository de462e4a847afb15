# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Compress an image without Python in the data path, and prove the result decompresses to the very same bytes.

The compressor reads the image file itself (an open file as its stdin) and writes straight into a hidden
temporary file next to the output (its stdout). Meanwhile a thread computes the image's SHA-256 from a second
reader of the same file, kept close behind the compressor so both reads share the page cache; progress comes
from the compressor's own read position (``/proc/<pid>/fdinfo/0``) and goes to ``log`` every
``progress_interval`` seconds. Verification then decompresses the temporary file with a multi-threaded
decompressor, hashes its output (and the compressed file, at the same time) and compares length and SHA-256 with
the image's. The output is renamed into place only when they agree, so the published file is either complete
and verified or absent.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import require_tools

CHUNK = 4 << 20
PIPE_SIZE = 1 << 20
# How far the hashing reader may run ahead of the compressor's read position, so that the compressor reads the
# image from the page cache (or the hasher does) instead of both reading it from disk.
READ_AHEAD = 512 << 20
FORMATS = {
    "xz": {"suffix": ".xz", "tool": "xz", "levels": range(0, 10)},
    "zstd": {"suffix": ".zst", "tool": "zstd", "levels": range(1, 23)},
}


def compressor_argv(fmt: str, level: int, threads: int, block_size: Optional[int] = None) -> List[str]:
    if fmt not in FORMATS:
        raise PibakeError(f"Unknown compression {fmt!r}; use xz or zstd.")
    if level not in FORMATS[fmt]["levels"]:
        levels = FORMATS[fmt]["levels"]
        raise PibakeError(f"{fmt} level {level} is out of range; use {levels.start}..{levels.stop - 1}.")
    if fmt == "xz":
        argv = ["xz", "-c", f"-{level}", f"-T{threads}", "--memlimit-compress=50%"]
        if block_size:
            argv.append(f"--block-size={block_size}")
        return argv
    argv = ["zstd", "-c", "-q", f"-{level}", f"-T{threads}", "--long=27"]
    if level > 19:
        argv.insert(3, "--ultra")
    return argv


def decompressor_argv(fmt: str) -> List[str]:
    """Threaded decompression where the tool has it (xz 5.4+ decodes the blocks of ``xz -T`` in parallel)."""
    if fmt == "xz":
        return ["xz", "-dc", "-T0"]
    return ["zstd", "-dc", "-q", "--long=31"]


def default_output(image: str, fmt: str, directory: Optional[str] = None) -> str:
    name = os.path.basename(image) + FORMATS[fmt]["suffix"]
    return os.path.join(directory or os.path.dirname(os.path.abspath(image)), name)


def input_position(pid: int, fd: int = 0) -> Optional[int]:
    """The file position of ``fd`` of process ``pid`` (``pos:`` in /proc/PID/fdinfo/FD); None once it is gone."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as handle:
            for line in handle:
                if line.startswith(b"pos:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class _Hasher(threading.Thread):
    """SHA-256 and length of a file or pipe, read in a thread; the first error is kept for the caller.

    ``limit``, when given, returns how far the reader may go for now (None: no limit any more).
    """

    def __init__(self, name: str, fd: int, limit: Optional[Callable[[], Optional[int]]] = None):
        super().__init__(name=name, daemon=True)
        self.fd, self.limit = fd, limit
        self.hash = hashlib.sha256()
        self.count = 0
        self.error: Optional[BaseException] = None
        self.stop = threading.Event()

    def run(self):
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        allowed = None
        try:
            while not self.stop.is_set():
                if self.limit is not None and (allowed is None or self.count >= allowed):
                    allowed = self.limit()
                    if allowed is None:
                        self.limit = None
                    elif self.count >= allowed:
                        self.stop.wait(0.05)
                        continue
                read = os.readv(self.fd, [view])
                if not read:
                    break
                self.hash.update(view[:read])
                self.count += read
        except BaseException as err:  # pylint: disable=broad-exception-caught  # reported by the caller
            self.error = err
        finally:
            view.release()

    def finish(self) -> None:
        """Wait for the thread; re-raise what stopped it."""
        self.join()
        if self.error is not None:
            raise self.error


def compress(image: str, output: Optional[str] = None, *, fmt: str = "xz", level: int = 6, threads: int = 0,
             block_size: Optional[int] = None, verify: bool = True, progress_interval: float = 15.0,
             check_mode: bool = False, log: Optional[Callable[[str], None]] = None) -> Dict[str, object]:
    """Compress ``image`` to ``output`` atomically; returns sizes, hashes and timings."""
    log = log or (lambda _msg: None)
    output = output or default_output(image, fmt)
    argv = compressor_argv(fmt, level, threads, block_size)
    if not os.path.isfile(image):
        raise PibakeError(f"Image {image} does not exist; pass the path of the shrunk .img file.")
    require_tools(FORMATS[fmt]["tool"], package_hint="install xz-utils and zstd (bindep.txt)")
    size = os.path.getsize(image)
    if check_mode:
        return {"changed": True, "output": output, "format": fmt, "level": level, "image_size": size}
    out_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, f".{os.path.basename(output)}.partial-{os.getpid()}")
    started = time.monotonic()
    procs: List[subprocess.Popen] = []
    threads_: List[_Hasher] = []
    fds: List[int] = []
    try:
        with open(image, "rb") as src, open(tmp, "wb") as dst:
            comp = _spawn(argv, src, dst)
            procs.append(comp)
            fds.append(os.open(image, os.O_RDONLY))
            image_hash = _Hasher("hash-image", fds[-1], limit=lambda: _allowed(comp))
            threads_.append(image_hash)
            image_hash.start()
            _watch(comp, progress_interval, lambda elapsed: _progress(log, comp.pid, dst, size, elapsed))
            # The compressor and this process share the open file: its final offset is what the compressor read.
            consumed = os.lseek(src.fileno(), 0, os.SEEK_CUR)
            os.fsync(dst.fileno())
        if comp.returncode != 0:
            raise PibakeError(f"{argv[0]} failed ({_stderr(comp)}); check free memory and disk space.")
        image_hash.finish()
        if image_hash.count != size or os.path.getsize(image) != size:
            raise PibakeError(f"{image} changed size while it was compressed; make sure nothing writes to it.")
        if consumed != size:
            raise PibakeError(f"{argv[0]} stopped after {consumed} of the {size} bytes of the image; the output was "
                              f"discarded, check the host's {argv[0]} and retry.")
        packed_hash = _check(tmp, fmt, verify, image_hash, output, argv[0], procs, threads_, fds,
                             progress_interval, log)
        os.replace(tmp, output)
        _fsync_dir(out_dir)
    except BaseException as err:
        for worker in threads_:
            worker.stop.set()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for worker in threads_:
            worker.join(timeout=5)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise PibakeError(f"Compressing stopped ({err}); check free space in the output folder and "
                              f"retry.") from err
        raise
    finally:
        for proc in procs:
            if proc.stdout:
                proc.stdout.close()
            proc.pibake_stderr.close()
        for fd in fds:
            os.close(fd)
    seconds = round(time.monotonic() - started, 3)
    packed = os.path.getsize(output)
    log(f"compress: {output} {packed >> 20} MiB ({100 * packed / max(size, 1):.1f} % of {size >> 20} MiB) in "
        f"{seconds} s, verified={verify}")
    return {
        "changed": True,
        "output": output,
        "format": fmt,
        "level": level,
        "command": " ".join(argv),
        "image_size": size,
        "image_sha256": image_hash.hash.hexdigest(),
        "compressed_size": packed,
        "compressed_sha256": packed_hash,
        "verified": verify,
        "seconds": seconds,
    }


def _check(tmp: str, fmt: str, verify: bool, image_hash: _Hasher, output: str, tool: str,
           procs: List[subprocess.Popen], threads_: List[_Hasher], fds: List[int], interval: float,
           log: Callable[[str], None]) -> str:
    """Hash the compressed file and, with ``verify``, decompress it and compare with the image; returns its hash."""
    fds.append(os.open(tmp, os.O_RDONLY))
    packed = _Hasher("hash-packed", fds[-1])
    threads_.append(packed)
    packed.start()
    if not verify:
        packed.finish()
        return packed.hash.hexdigest()
    mark = time.monotonic()
    with open(tmp, "rb") as src:
        dec = _spawn(decompressor_argv(fmt), src, subprocess.PIPE)
    procs.append(dec)
    try:
        fcntl.fcntl(dec.stdout.fileno(), 1031, PIPE_SIZE)  # F_SETPIPE_SZ: fewer, larger reads
    except OSError:
        pass
    check = _Hasher("hash-check", dec.stdout.fileno())
    threads_.append(check)
    check.start()
    _watch(dec, interval, lambda elapsed: log(f"compress: verifying, {check.count >> 20}/{image_hash.count >> 20} "
                                              f"MiB decompressed in {elapsed:.0f} s"), reader=check)
    check.finish()
    packed.finish()
    if dec.returncode != 0:
        raise PibakeError(f"The compressed image does not decompress ({_stderr(dec)}); the output was discarded, "
                          f"check the host's {tool} and retry.")
    if check.count != image_hash.count or check.hash.digest() != image_hash.hash.digest():
        raise PibakeError(f"{output} does not decompress to the image (sha256 mismatch); the output was "
                          f"discarded, check the host's memory and {tool} and retry.")
    log(f"compress: {check.count >> 20} MiB decompressed and compared in {time.monotonic() - mark:.1f} s")
    return packed.hash.hexdigest()


def _watch(proc: subprocess.Popen, interval: float, report: Callable[[float], None],
           reader: Optional[_Hasher] = None) -> None:
    """Wait for ``proc``, calling ``report(elapsed)`` every ``interval`` seconds while it runs; stop at once when
    ``reader`` (the thread emptying its output) failed, as the process would then wait for it forever."""
    started = last = time.monotonic()
    while True:
        try:
            proc.wait(timeout=min(0.5, max(interval, 0.05)))
            return
        except subprocess.TimeoutExpired:
            pass
        if reader is not None and reader.error is not None:
            raise reader.error
        now = time.monotonic()
        if now - last >= interval:
            last = now
            report(now - started)


def _allowed(proc: subprocess.Popen) -> Optional[int]:
    if proc.returncode is not None:
        return None
    pos = input_position(proc.pid)
    return None if pos is None else pos + READ_AHEAD


def _progress(log: Callable[[str], None], pid: int, dst, size: int, elapsed: float) -> None:
    done = input_position(pid)
    if done is None:
        return
    written = os.fstat(dst.fileno()).st_size
    rate = done / elapsed if elapsed else 0
    eta = f"about {(size - done) / rate:.0f} s left" if rate else "estimating"
    log(f"compress: {done >> 20}/{size >> 20} MiB done ({100 * done // max(size, 1)} %), "
        f"{written >> 20} MiB written, {rate / 2**20:.1f} MiB/s, {eta}")


def _spawn(argv: List[str], stdin, stdout) -> subprocess.Popen:
    """Start a filter on the given stdin/stdout, stderr kept in a temporary file (never blocks)."""
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=err)
    except FileNotFoundError:
        err.close()
        raise PibakeError(f"Host tool {argv[0]} not found; install it (bindep.txt).") from None
    proc.pibake_stderr = err
    return proc


def _stderr(proc: subprocess.Popen) -> str:
    data = []
    handle = getattr(proc, "pibake_stderr", None)
    if handle is not None:
        handle.seek(0)
        data = handle.read().decode(errors="replace").strip().splitlines()
    return data[-1] if data else f"exit code {proc.returncode}"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
