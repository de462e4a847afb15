# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""HTTP(S) download with resume (HTTP Range), progress lines and sha256 verification.

The file grows as ``<dest>.part`` and is renamed to ``dest`` only once its sha256 matched, so ``dest`` is whole or
absent. A ``.part`` left by an interrupted run is resumed by the next one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
from typing import Optional

from ansible.module_utils.urls import ConnectionError as UrlsConnectionError, open_url

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress, Ticker

CHUNK = 1 << 20
USER_AGENT = "pibake.image (base image download)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def normalize_sha256(value: object, what: str) -> str:
    """Lower-case hex digest, accepting an optional ``sha256:`` prefix; anything else is a PibakeError."""
    text = str(value or "").strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    if not _SHA256.match(text):
        raise PibakeError(f"{what} must be a sha256 digest of 64 hex characters, got {value!r}; fix it.")
    return text


def sha256_file(path: str, progress: Optional[Progress] = None, what: str = "") -> str:
    """sha256 of a whole file, with progress lines when ``progress`` is given."""
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    ticker = Ticker(progress, what or f"hashing {os.path.basename(path)}", size, every_pct=25) if progress else None
    done = 0
    with open(path, "rb") as handle:
        while True:
            block = handle.read(CHUNK * 4)
            if not block:
                break
            digest.update(block)
            done += len(block)
            if ticker:
                ticker.update(done)
    return digest.hexdigest()


class _Retryable(Exception):
    """A network hiccup worth resuming after."""


def _open(url: str, offset: int, timeout: float):
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:  # the caller checked the scheme (http/https only)
        return open_url(url, headers=headers, timeout=timeout, http_agent=USER_AGENT, decompress=False,
                        use_netrc=False)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            return err  # the caller decides: the .part may already be complete
        if err.code >= 500 or err.code == 429:
            raise _Retryable(f"HTTP {err.code} {err.reason}") from None
        raise PibakeError(
            f"Downloading {url} failed with HTTP {err.code} {err.reason}; check the url in pibake_base_image."
        ) from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (socket.timeout, ConnectionError, TimeoutError)):
            raise _Retryable(str(reason)) from None
        raise PibakeError(
            f"Downloading {url} failed ({reason}); check the url in pibake_base_image and the network."
        ) from None
    except (socket.timeout, ConnectionError, TimeoutError, http.client.HTTPException) as err:
        raise _Retryable(str(err) or type(err).__name__) from None
    except UrlsConnectionError as err:  # TLS validation or proxy failures raised by open_url
        raise PibakeError(
            f"Downloading {url} failed ({err}); check the url in pibake_base_image and the network."
        ) from None


def download(
    url: str,
    dest: str,
    sha256: str,
    progress: Progress,
    *,
    attempts: int = 5,
    timeout: float = 60.0,
    retry_delay: float = 2.0,
) -> str:
    """Download ``url`` to ``dest`` (resuming ``dest + '.part'``) and verify its sha256; return ``dest``."""
    if not re.match(r"^https?://", url or ""):
        raise PibakeError(f"The base image url {url!r} is not an http(s) URL; give an http:// or https:// url.")
    sha256 = normalize_sha256(sha256, "pibake_base_image.sha256")
    if os.path.exists(dest):
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    digest = hashlib.sha256()
    have = 0
    if os.path.exists(part):
        with open(part, "rb") as handle:
            while True:
                block = handle.read(CHUNK * 4)
                if not block:
                    break
                digest.update(block)
                have += len(block)
        progress.log(f"download: resuming {url} at {have >> 20} MiB")
    else:
        progress.log(f"download: fetching {url}")

    last_error = ""
    for attempt in range(1, attempts + 1):
        try:
            have, digest = _transfer(url, part, have, digest, progress, timeout)
            break
        except _Retryable as err:
            last_error = str(err)
            progress.log(f"download: interrupted at {have_of(part) >> 20} MiB ({last_error}); attempt {attempt}/{attempts}")
            # re-read what reached the disk: the transfer may have written part of a chunk
            have, digest = _rehash(part)
            if attempt < attempts:
                time.sleep(retry_delay)
    else:
        raise PibakeError(
            f"Downloading {url} kept failing ({last_error}) after {attempts} attempts; check the network and run "
            f"the build again — it resumes from the {have >> 20} MiB already fetched."
        )

    got = digest.hexdigest()
    if got != sha256:
        os.unlink(part)
        raise PibakeError(
            f"The file downloaded from {url} has sha256 {got}, not the expected {sha256}; fix pibake_base_image.sha256 "
            f"or the url (the bad download was deleted)."
        )
    os.replace(part, dest)
    progress.log(f"download: complete, sha256 verified ({have >> 20} MiB)")
    return dest


def have_of(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _rehash(part: str):
    digest = hashlib.sha256()
    have = 0
    if os.path.exists(part):
        with open(part, "rb") as handle:
            while True:
                block = handle.read(CHUNK * 4)
                if not block:
                    break
                digest.update(block)
                have += len(block)
    return have, digest


def _transfer(url: str, part: str, have: int, digest, progress: Progress, timeout: float):
    """One HTTP request: continue ``part`` from ``have`` bytes; return the new (have, digest)."""
    response = _open(url, have, timeout)
    status = getattr(response, "status", None) or response.getcode()
    try:
        if status == 416:
            # Range not satisfiable: the .part already holds the whole file (or is larger than it).
            progress.log("download: server says the partial file is already complete")
            return have, digest
        total: Optional[int] = None
        if status == 206 and have:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                raise _Retryable("server answered a different range than asked")
            total = int(match.group(3)) if match.group(3) != "*" else None
            mode = "ab"
        else:
            if have:
                progress.log("download: server does not support resume (no HTTP Range); starting over")
            have = 0
            digest = hashlib.sha256()
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        ticker = Ticker(progress, "download", total, start=have)
        with open(part, mode) as out:
            while True:
                try:
                    block = response.read(CHUNK)
                except (socket.timeout, ConnectionError, TimeoutError, http.client.HTTPException) as err:
                    out.flush()
                    raise _Retryable(str(err) or type(err).__name__) from None
                if not block:
                    break
                out.write(block)
                digest.update(block)
                have += len(block)
                ticker.update(have)
        if total is not None and have < total:
            raise _Retryable(f"connection closed at {have} of {total} bytes")
        ticker.update(have, final=True)
        return have, digest
    finally:
        response.close()
