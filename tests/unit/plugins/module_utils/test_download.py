# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Download with resume, progress and sha256 checks, against local servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import time

import pytest

from ansible_collections.pibake.image.plugins.module_utils._download import download, normalize_sha256
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress

sys.path.insert(0, os.path.dirname(__file__))
from _httpfixtures import RangeHandler, Server  # noqa: E402

PAYLOAD = os.urandom(3 << 20) + bytes(1 << 20) + b"tail"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture()
def served(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "image.img.xz").write_bytes(PAYLOAD)
    return root


def _progress():
    stream = io.StringIO()
    return Progress(stream=stream), stream


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_with_python_http_server_verifies_and_logs_progress(served, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory",
                             str(served)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        progress, stream = _progress()
        dest = tmp_path / "out" / "image.img.xz"
        assert download(f"http://127.0.0.1:{port}/image.img.xz", str(dest), SHA, progress) == str(dest)
        assert dest.read_bytes() == PAYLOAD
        assert not (tmp_path / "out" / "image.img.xz.part").exists()
        log = stream.getvalue()
        assert "download: 100%" in log and "sha256 verified" in log
        assert log.count("download:") >= 5  # several progress lines, not just start/end
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_resume_uses_http_range(served, tmp_path):
    dest = tmp_path / "image.img.xz"
    (tmp_path / "image.img.xz.part").write_bytes(PAYLOAD[:1234567])
    with Server(str(served), RangeHandler) as server:
        progress, stream = _progress()
        download(f"{server.url}/image.img.xz", str(dest), SHA, progress)
        assert server.handler.ranges == ["bytes=1234567-"]
    assert dest.read_bytes() == PAYLOAD
    assert "resuming" in stream.getvalue()


def test_resume_when_server_ignores_range_starts_over(served, tmp_path):
    dest = tmp_path / "image.img.xz"
    (tmp_path / "image.img.xz.part").write_bytes(b"garbage that must not stay in front")
    with Server(str(served)) as server:  # SimpleHTTPRequestHandler: no Range support, answers 200
        progress, stream = _progress()
        download(f"{server.url}/image.img.xz", str(dest), SHA, progress)
    assert dest.read_bytes() == PAYLOAD
    assert "starting over" in stream.getvalue()


def test_dropped_connection_is_resumed_in_the_same_call(served, tmp_path):
    dest = tmp_path / "image.img.xz"
    with Server(str(served), RangeHandler) as server:
        server.handler.drop_after.update({1: 1 << 20, 2: 500000})
        progress, stream = _progress()
        download(f"{server.url}/image.img.xz", str(dest), SHA, progress, retry_delay=0)
        assert server.handler.ranges == [None, f"bytes={1 << 20}-", f"bytes={(1 << 20) + 500000}-"]
    assert dest.read_bytes() == PAYLOAD
    assert stream.getvalue().count("interrupted") == 2


def test_complete_part_file_answered_416_is_accepted(served, tmp_path):
    dest = tmp_path / "image.img.xz"
    (tmp_path / "image.img.xz.part").write_bytes(PAYLOAD)
    with Server(str(served), RangeHandler) as server:
        download(f"{server.url}/image.img.xz", str(dest), SHA, _progress()[0])
    assert dest.read_bytes() == PAYLOAD


def test_sha256_mismatch_deletes_the_download_and_names_the_fix(served, tmp_path):
    dest = tmp_path / "image.img.xz"
    with Server(str(served)) as server:
        with pytest.raises(PibakeError, match=r"not the expected .*fix pibake_base_image.sha256"):
            download(f"{server.url}/image.img.xz", str(dest), "0" * 64, _progress()[0])
    assert not dest.exists() and not (tmp_path / "image.img.xz.part").exists()


def test_http_404_is_one_sentence(served, tmp_path):
    with Server(str(served)) as server:
        with pytest.raises(PibakeError, match=r"HTTP 404 .*check the url"):
            download(f"{server.url}/missing.img", str(tmp_path / "x"), SHA, _progress()[0])


def test_unreachable_server_is_one_sentence(tmp_path):
    port = _free_port()  # nothing listens there
    with pytest.raises(PibakeError, match=r"(failed|kept failing).*check"):
        download(f"http://127.0.0.1:{port}/x.img", str(tmp_path / "x"), SHA, _progress()[0], attempts=2,
                 retry_delay=0)


def test_only_http_urls(tmp_path):
    with pytest.raises(PibakeError, match="http"):
        download("ftp://127.0.0.1/x.img", str(tmp_path / "x"), SHA, _progress()[0])


@pytest.mark.parametrize("value", ["abc", "g" * 64, "", None])
def test_normalize_sha256_rejects_bad_digests(value):
    with pytest.raises(PibakeError, match="64 hex"):
        normalize_sha256(value, "pibake_base_image.sha256")


def test_normalize_sha256_accepts_prefix_and_upper_case():
    assert normalize_sha256("SHA256:" + SHA.upper(), "x") == SHA
