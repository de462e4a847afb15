# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Publish finished files into the deploy folder so that each one appears whole or not at all."""

from __future__ import annotations

import contextlib
import os
import re
import signal
from typing import Dict, Iterator, List, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._sparse import write_sparse

# Lines of a log that must never be published (belt and braces on top of no_log).
SECRET_LINE = re.compile(r"(?i)(password|passphrase|secret|token|authorization)\s*[=:]\s*\S+")


def _temp_name(dest: str) -> str:
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.partial-{os.getpid()}")


def _stage(src: str, dest: str, move: bool) -> str:
    """Copy or move ``src`` to a hidden temp name beside ``dest``; returns the temp name."""
    temp = _temp_name(dest)
    try:
        if move and os.stat(src).st_dev == os.stat(os.path.dirname(dest)).st_dev:
            os.rename(src, temp)
        else:
            with open(src, "rb") as reader, open(temp, "wb") as writer:
                _sparse_copy(reader, writer)
        os.chmod(temp, 0o644)
    except OSError as err:
        if os.path.exists(temp):
            os.unlink(temp)
        raise PibakeError(f"Writing {dest} failed ({err.strerror}); free space in {os.path.dirname(dest)} and build again.") from None
    return temp


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP while the renames run, so that Ctrl-C cannot split a release in two."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _sparse_copy(reader, writer) -> None:
    write_sparse(reader, writer)
    writer.flush()
    os.fsync(writer.fileno())


def scrub_log(src: str, dest: str) -> None:
    """Copy a build log, masking any line that looks like it carries a secret value."""
    with open(src, encoding="utf-8", errors="replace") as reader, open(dest, "w", encoding="utf-8") as writer:
        for line in reader:
            writer.write(SECRET_LINE.sub(lambda m: m.group(1) + "=********", line))


def publish(deploy_dir: str, files: List[Dict[str, str]], build_log: Optional[str], move: bool = True) -> List[str]:
    """Put ``files`` ({src, name}) and the scrubbed build log into ``deploy_dir``; returns the paths written.

    Every file is first written under a hidden temporary name; only when all of them are there are they renamed
    into place, one rename each with signals held, so the visible files are always one release or the other.
    """
    os.makedirs(deploy_dir, exist_ok=True)
    for entry in files:
        if not os.path.isfile(entry["src"]):
            raise PibakeError(f"Output {entry['src']} was not produced; see build.log for the step that failed.")
    staged: List[Tuple[str, str]] = []
    try:
        for entry in files:
            dest = os.path.join(deploy_dir, entry["name"])
            staged.append((_stage(entry["src"], dest, move), dest))
        if build_log and os.path.isfile(build_log):
            dest = os.path.join(deploy_dir, "build.log")
            temp = os.path.join(deploy_dir, f".build.log.scrub-{os.getpid()}")
            scrub_log(build_log, temp)
            staged.append((temp, dest))
        with _signals_deferred():
            for temp, dest in staged:
                os.replace(temp, dest)
    finally:
        for temp, _dest in staged:
            if os.path.exists(temp):
                os.unlink(temp)
    return [dest for _temp, dest in staged]


def remove_partials(deploy_dir: str) -> List[str]:
    """Delete temp files a killed publish left behind (they are hidden and never look like outputs)."""
    removed = []
    if os.path.isdir(deploy_dir):
        for name in os.listdir(deploy_dir):
            if name.startswith(".") and (".partial-" in name or ".scrub-" in name):
                os.unlink(os.path.join(deploy_dir, name))
                removed.append(name)
    return removed
