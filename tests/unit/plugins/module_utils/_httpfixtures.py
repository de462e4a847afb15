# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Local HTTP servers on 127.0.0.1 for the download tests: plain, with Range support, and one that drops the
connection part way through its first answers."""

from __future__ import annotations

import functools
import http.server
import os
import re
import threading


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


class RangeHandler(QuietHandler):
    """Serves files with HTTP Range (206) support; counts requests and the Range headers it saw."""

    ranges: list = []
    drop_after: dict = {}  # request number -> bytes to send before closing the connection

    def do_GET(self):  # noqa: N802
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404, "Not Found")
            return
        type(self).ranges.append(self.headers.get("Range"))
        number = len(type(self).ranges)
        size = os.path.getsize(path)
        start = 0
        match = re.match(r"bytes=(\d+)-$", self.headers.get("Range") or "")
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
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        limit = type(self).drop_after.get(number)
        with open(path, "rb") as handle:
            handle.seek(start)
            data = handle.read()
        if limit is not None:
            self.wfile.write(data[:limit])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


class Server:
    def __init__(self, directory: str, handler=QuietHandler):
        self.handler = type("H", (handler,), {"ranges": [], "drop_after": {}})
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(self.handler, directory=directory)
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
