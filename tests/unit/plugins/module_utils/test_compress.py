# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_compress: the compressor reads the image file and writes the output file itself; a verified round trip,
atomic output, failures (a compressor that corrupts, truncates or fails, an interrupt) leave nothing."""

import hashlib
import lzma
import os
import subprocess
import time

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
    monkeypatch.setattr(_compress, "compressor_argv",
                        lambda *a: ["sh", "-c", "head -c 10 >/dev/null; echo 'xz: out of luck' >&2; exit 3"])
    with pytest.raises(PibakeError, match=r"^sh failed \(xz: out of luck\); check free memory"):
        _compress.compress(image, str(tmp_path / "disk.img.xz"))
    assert os.listdir(tmp_path) == ["disk.img"]


def test_a_compressor_that_stops_reading_early_is_caught(tmp_path, image, monkeypatch):
    monkeypatch.setattr(_compress, "compressor_argv", lambda *a: ["sh", "-c", "head -c 4096 >/dev/null"])
    with pytest.raises(PibakeError, match=r"^sh stopped after 4096 of the 8388608 bytes of the image"):
        _compress.compress(image, str(tmp_path / "disk.img.xz"))
    assert os.listdir(tmp_path) == ["disk.img"]


def _shim(tmp_path, monkeypatch, script):
    """A fake ``xz`` first on PATH: ``script`` runs with the real xz's directory in $REAL."""
    real = os.path.dirname(subprocess.run(["sh", "-c", "command -v xz"], capture_output=True, text=True,
                                          check=True).stdout.strip())
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "xz").write_text(f"#!/bin/sh\nREAL={real}\n{script}\n")
    (shim / "xz").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")


def test_a_compressor_that_corrupts_the_data_is_caught(tmp_path, image, monkeypatch):
    # a valid xz stream of slightly different bytes: only the hash comparison can tell
    _shim(tmp_path, monkeypatch, 'case "$1" in -dc) exec $REAL/xz "$@";; esac\ntr p P | $REAL/xz "$@"')
    out = tmp_path / "disk.img.xz"
    with pytest.raises(PibakeError, match="does not decompress to the image \\(sha256 mismatch\\)"):
        _compress.compress(image, str(out), level=0)
    assert sorted(os.listdir(tmp_path)) == ["bin", "disk.img"]


def test_a_truncated_compressed_stream_is_caught(tmp_path, image, monkeypatch):
    _shim(tmp_path, monkeypatch, 'case "$1" in -dc) exec $REAL/xz "$@";; esac\n'
                                 '$REAL/xz "$@" | head -c 100000; cat >/dev/null')
    out = tmp_path / "disk.img.xz"
    with pytest.raises(PibakeError, match="The compressed image does not decompress \\(.*xz: "):
        _compress.compress(image, str(out), level=0)
    assert sorted(os.listdir(tmp_path)) == ["bin", "disk.img"]


def test_compressor_reads_the_image_file_and_writes_the_output_file_itself(tmp_path, image, monkeypatch):
    # the fake compressor records what its stdin and stdout are: the image and the hidden temporary file
    record = tmp_path / "fds"
    _shim(tmp_path, monkeypatch, f'case "$1" in -dc) exec $REAL/xz "$@";; esac\n'
                                 f'echo $(readlink /proc/$$/fd/0 /proc/$$/fd/1) > {record}\nexec $REAL/xz "$@"')
    out = tmp_path / "deploy" / "disk.img.xz"
    result = _compress.compress(image, str(out), level=0)
    stdin, stdout = record.read_text().split()
    assert stdin == image
    assert os.path.dirname(stdout) == str(tmp_path / "deploy")
    assert os.path.basename(stdout).startswith(".disk.img.xz.partial-")
    assert result["compressed_sha256"] == _sha(out) and result["image_sha256"] == _sha(image)


def test_progress_comes_from_the_compressors_read_position(tmp_path, image, monkeypatch):
    # a slow compressor: reads 3 MiB, waits, then the rest; the progress lines follow its position in the file
    _shim(tmp_path, monkeypatch, 'case "$1" in -dc) exec $REAL/xz "$@";; esac\n'
                                 'dd bs=1M count=3 iflag=fullblock of=/dev/null status=none; sleep 1.2; '
                                 'exec cat >/dev/null')
    monkeypatch.setattr(_compress, "decompressor_argv", lambda fmt: ["head", "-c", str(8 << 20), image])
    lines = []
    result = _compress.compress(image, str(tmp_path / "disk.img.xz"), progress_interval=0.1, log=lines.append)
    progress = [line for line in lines if " MiB done (" in line]
    assert any(line.startswith("compress: 3/8 MiB done (37 %), 0 MiB written,") for line in progress), lines
    assert all("MiB/s" in line and ("s left" in line or "estimating" in line) for line in progress)
    assert result["verified"] and result["compressed_size"] == 0


def test_input_position_reads_fdinfo(tmp_path, image):
    with open(image, "rb") as handle:
        handle.seek(12345)
        proc = subprocess.Popen(["sleep", "5"], stdin=handle)
    try:
        assert _compress.input_position(proc.pid) == 12345
    finally:
        proc.kill()
        proc.wait()
    assert _compress.input_position(proc.pid) is None


def test_an_interrupt_kills_the_compressor_and_removes_the_temporary_file(tmp_path, image, monkeypatch):
    pidfile = tmp_path / "pid"
    monkeypatch.setattr(_compress, "compressor_argv",
                        lambda *a: ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"])

    def interrupt(_line):
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        _compress.compress(image, str(tmp_path / "disk.img.xz"), progress_interval=0.1, log=interrupt)
    assert time.monotonic() - started < 10
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}")            # killed and reaped
    assert sorted(os.listdir(tmp_path)) == ["disk.img", "pid"]


def test_an_image_that_changes_size_is_refused(tmp_path, image, monkeypatch):
    # the "compressor" appends to the image while reading it
    monkeypatch.setattr(_compress, "compressor_argv",
                        lambda *a: ["sh", "-c", f"cat >/dev/null; printf more >> {image}"])
    with pytest.raises(PibakeError, match="changed size while it was compressed"):
        _compress.compress(image, str(tmp_path / "disk.img.xz"), verify=False)
    assert os.listdir(tmp_path) == ["disk.img"]


def test_without_verification_hashes_are_still_right(tmp_path, image):
    out = str(tmp_path / "disk.img.zst")
    result = _compress.compress(image, out, fmt="zstd", level=1, verify=False)
    assert not result["verified"]
    assert result["image_sha256"] == _sha(image) and result["compressed_sha256"] == _sha(out)
    assert sorted(result) == sorted(["changed", "output", "format", "level", "command", "image_size",
                                     "image_sha256", "compressed_size", "compressed_sha256", "verified", "seconds"])


def test_levels_and_formats_are_validated(image):
    with pytest.raises(PibakeError, match="level 10 is out of range"):
        _compress.compressor_argv("xz", 10, 0)
    with pytest.raises(PibakeError, match="Unknown compression"):
        _compress.compressor_argv("gzip", 6, 0)
    assert _compress.compressor_argv("zstd", 22, 0)[:4] == ["zstd", "-c", "-q", "--ultra"]
    assert _compress.default_output(image, "zstd").endswith("disk.img.zst")
    result = _compress.compress(image, check_mode=True)
    assert result["output"].endswith("disk.img.xz") and not os.path.exists(result["output"])


def test_a_full_disk_is_reported_and_leaves_nothing(tmp_path, image, monkeypatch):
    def fsync(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_compress.os, "fsync", fsync)
    with pytest.raises(PibakeError, match=r"^Compressing stopped \(\[Errno 28\] No space left on device\); check"):
        _compress.compress(image, str(tmp_path / "disk.img.xz"), level=0)
    assert os.listdir(tmp_path) == ["disk.img"]
