# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""A local HTTP file server on 127.0.0.1 for base-image downloads in tests.

    with FileServer(folder, rate=2 << 20) as server:   # 2 MiB/s, so a download lasts long enough to be interrupted
        server.url("mini.img.xz")

It answers ``Range: bytes=N-`` with 206 and ``Content-Range`` (the download code resumes a ``.part`` with it) and
counts the requests and bytes it served, so a test can tell a resumed download from one started over.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
from typing import Dict, List, Optional

_RANGE = re.compile(r"^bytes=(\d+)-$")


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = "pibake-test-http/1"

    def log_message(self, *args) -> None:  # quiet: pytest output is for the tests
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        owner: "FileServer" = self.server.owner  # type: ignore[attr-defined]
        name = self.path.lstrip("/").split("?", 1)[0]
        path = os.path.join(owner.folder, os.path.basename(name))
        if not name or not os.path.isfile(path):
            self.send_error(404, "Not Found")
            return
        size = os.path.getsize(path)
        start = 0
        match = _RANGE.match(self.headers.get("Range", "") or "")
        if match:
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        self.end_headers()
        owner.requests.append({"path": name, "start": start})
        with open(path, "rb") as handle:
            handle.seek(start)
            while True:
                block = handle.read(owner.block)
                if not block:
                    break
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):
                    return
                owner.bytes_sent += len(block)
                if owner.rate:
                    time.sleep(len(block) / owner.rate)


class FileServer:
    """Serve the files of ``folder`` on 127.0.0.1 at ``rate`` bytes per second (0: as fast as possible)."""

    def __init__(self, folder: str, rate: int = 0, block: int = 64 << 10):
        self.folder = folder
        self.rate = rate
        self.block = block
        self.requests: List[Dict[str, object]] = []
        self.bytes_sent = 0
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def start(self) -> "FileServer":
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="pibake-test-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "FileServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
