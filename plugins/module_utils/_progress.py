# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Progress lines for long steps, written to a file or stderr — never stdout, which belongs to the module's JSON."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Dict, Iterator, Optional, TextIO


class Progress:
    """Timestamped progress lines plus a record of how long each named step took.

    ``path`` given: lines are appended to that file (created with its folder). Otherwise they go to stderr.
    ``timings`` maps step name to seconds once the step has finished.
    """

    def __init__(self, path: Optional[str] = None, stream: Optional[TextIO] = None):
        self.path = path
        self._stream = stream
        self._file: Optional[TextIO] = None
        self._t0 = time.monotonic()
        self.timings: Dict[str, float] = {}
        if path:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8", buffering=1)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def log(self, message: str) -> None:
        line = f"[pibake {time.strftime('%H:%M:%S')} +{self.elapsed():6.1f}s] {message}\n"
        out = self._file or self._stream or sys.stderr
        try:
            out.write(line)
            out.flush()
        except (OSError, ValueError):
            pass  # progress is best effort; never let it break the build

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Log the start and end of a step and record its duration in ``timings``."""
        self.log(f"step {name}: started")
        start = time.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            took = round(time.monotonic() - start, 1)
            self.timings[name] = took
            self.log(f"step {name}: {'done' if ok else 'FAILED'} in {took:.1f} s")


class Ticker:
    """Say how far a long copy has come: one line every ``every_pct`` percent, or every ``every_bytes`` when the
    total is unknown."""

    def __init__(self, progress: Progress, what: str, total: Optional[int], *, start: int = 0,
                 every_pct: float = 5.0, every_bytes: int = 64 << 20):
        self.progress = progress
        self.what = what
        self.total = total if total and total > 0 else None
        self.every_pct = every_pct
        self.every_bytes = every_bytes
        self.start_bytes = start
        self.t0 = time.monotonic()
        self._next = self._mark_after(start)

    def _mark_after(self, done: int) -> int:
        if self.total:
            step = max(1, int(self.total * self.every_pct / 100))
        else:
            step = self.every_bytes
        return (done // step + 1) * step

    def update(self, done: int, *, final: bool = False) -> None:
        if not final and done < self._next:
            return
        self._next = self._mark_after(done)
        secs = max(time.monotonic() - self.t0, 1e-6)
        rate = (done - self.start_bytes) / secs / (1 << 20)
        if self.total:
            self.progress.log(
                f"{self.what}: {done * 100 // self.total:3d}% ({done >> 20} of {self.total >> 20} MiB, {rate:.1f} MiB/s)"
            )
        else:
            self.progress.log(f"{self.what}: {done >> 20} MiB ({rate:.1f} MiB/s)")
