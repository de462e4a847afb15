# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Compress an image in one streaming pass and prove the result decompresses to the very same bytes.

One read of the image feeds the compressor and a SHA-256 of the image; the compressed stream is written to a
temporary file next to the output, hashed, and fed at the same time to a decompressor whose output is hashed
too. The output is renamed into place only when both image hashes and lengths agree, so the published file is
either complete and verified or absent. Progress goes to ``log`` every ``progress_interval`` seconds.
"""

from __future__ import annotations

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
    if fmt == "xz":
        return ["xz", "-dc", "-T1"]
    return ["zstd", "-dc", "-q", "--long=31"]


def default_output(image: str, fmt: str, directory: Optional[str] = None) -> str:
    name = os.path.basename(image) + FORMATS[fmt]["suffix"]
    return os.path.join(directory or os.path.dirname(os.path.abspath(image)), name)


class _Pump(threading.Thread):
    """Copy a stream to sinks in a thread, remembering the first error."""

    def __init__(self, name: str, source, sinks, hasher, close_after=()):
        super().__init__(name=name, daemon=True)
        self.source, self.sinks, self.hasher, self.close_after = source, sinks, hasher, close_after
        self.count = 0
        self.error: Optional[BaseException] = None

    def run(self):
        try:
            read = getattr(self.source, "read1", self.source.read)
            while True:
                chunk = read(CHUNK)
                if not chunk:
                    break
                self.hasher.update(chunk)
                for sink in self.sinks:
                    sink.write(chunk)
                self.count += len(chunk)
        except BaseException as err:  # reported by the caller
            self.error = err
        finally:
            for handle in self.close_after:
                try:
                    handle.close()
                except (OSError, ValueError) as err:
                    if self.error is None and not isinstance(err, BrokenPipeError):
                        self.error = err


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
    try:
        with open(image, "rb") as src, open(tmp, "wb") as dst:
            comp = _spawn(argv)
            procs.append(comp)
            sinks = [dst]
            dec = None
            if verify:
                dec = _spawn(decompressor_argv(fmt))
                procs.append(dec)
                sinks.append(dec.stdin)
            image_hash, packed_hash, check_hash = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
            feeder = _Pump("feed", src, [comp.stdin], image_hash, close_after=[comp.stdin])
            drain = _Pump("drain", comp.stdout, sinks, packed_hash, close_after=[dec.stdin] if dec else [])
            pumps = [feeder, drain]
            if dec is not None:
                pumps.append(_Pump("verify", dec.stdout, [], check_hash))
            for pump in pumps:
                pump.start()
            last = time.monotonic()
            failure = None
            while failure is None and any(p.is_alive() for p in pumps):
                for pump in pumps:
                    pump.join(timeout=0.5)
                    if not pump.is_alive() and pump.error is not None:
                        failure = pump.error
                        break
                now = time.monotonic()
                if now - last >= progress_interval:
                    last = now
                    elapsed = now - started
                    # With verification on, the decompressed count is what has really gone all the way through
                    # (the compressor buffers whole blocks, so the read count runs ahead of it).
                    done = pumps[2].count if dec is not None else feeder.count
                    rate = done / elapsed if elapsed else 0
                    eta = f"about {(size - done) / rate:.0f} s left" if rate else "estimating"
                    log(f"compress: {done >> 20}/{size >> 20} MiB done ({100 * done // max(size, 1)} %), "
                        f"{drain.count >> 20} MiB written, {rate / 2**20:.1f} MiB/s, {eta}")
            failure = failure or next((p.error for p in pumps if p.error is not None), None)
            if failure is not None:
                _explain(failure, comp, dec, argv)
            dst.flush()
            os.fsync(dst.fileno())
        rc = comp.wait()
        if rc != 0:
            raise PibakeError(f"{argv[0]} failed ({_stderr(comp)}); check free memory and disk space.")
        if dec is not None:
            rc = dec.wait()
            if rc != 0:
                raise PibakeError(f"The compressed image does not decompress ({_stderr(dec)}); the output was "
                                  f"discarded, check the host's {argv[0]} and retry.")
            if check_hash.hexdigest() != image_hash.hexdigest() or pumps[2].count != feeder.count:
                raise PibakeError(f"{output} does not decompress to the image (sha256 mismatch); the output "
                                  f"was discarded, check the host's memory and {argv[0]} and retry.")
        if feeder.count != size:
            raise PibakeError(f"{image} changed size while it was compressed; make sure nothing writes to it.")
        os.replace(tmp, output)
        _fsync_dir(out_dir)
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        for proc in procs:
            if proc.stdout:
                proc.stdout.close()
            proc.pibake_stderr.close()
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
        "image_sha256": image_hash.hexdigest(),
        "compressed_size": packed,
        "compressed_sha256": packed_hash.hexdigest(),
        "verified": verify,
        "seconds": seconds,
    }


def _explain(failure: BaseException, comp: subprocess.Popen, dec: Optional[subprocess.Popen],
             argv: List[str]) -> None:
    """Turn a broken stream into the sentence that names the process that failed."""
    for proc in (comp, dec):
        if proc is None:
            continue
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if comp.returncode not in (0, -9):
        raise PibakeError(f"{argv[0]} failed ({_stderr(comp)}); check free memory and disk space.")
    if dec is not None and dec.returncode not in (0, -9):
        raise PibakeError(f"The compressed image does not decompress ({_stderr(dec)}); the output was discarded, "
                          f"check the host's {argv[0]} and retry.")
    if isinstance(failure, PibakeError):
        raise failure
    raise PibakeError(f"Compressing stopped ({failure}); check free space in the output folder and retry.")


def _spawn(argv: List[str]) -> subprocess.Popen:
    """Start a filter with pipes on stdin/stdout and stderr kept in a temporary file (never blocks)."""
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
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
