# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""``sha256sum``-compatible checksum files (``<hex>  <name>``), written atomically next to what they describe."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Dict, Optional

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

CHUNK = 4 << 20
HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def line(digest: str, name: str) -> str:
    """One sha256sum line: two spaces (text mode marker) between digest and file name."""
    return f"{digest}  {name}\n"


def parse(content: str) -> Dict[str, str]:
    """{name: digest} from sha256sum output (text ``  `` or binary `` *`` separator)."""
    entries = {}
    for raw in content.splitlines():
        match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", raw.strip())
        if match:
            entries[match.group(2)] = match.group(1).lower()
    return entries


def write_atomic(path: str, data: bytes) -> bool:
    """Write ``data`` to ``path`` through a temporary file and rename; False when it was already identical."""
    try:
        with open(path, "rb") as handle:
            if handle.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True


def write_checksum(path: str, *, digest: Optional[str] = None, dest: Optional[str] = None,
                   name: Optional[str] = None, check_mode: bool = False) -> Dict[str, object]:
    """Write ``<path>.sha256`` (or ``dest``) naming the file by its base name, as ``sha256sum -c`` expects.

    ``digest`` may carry a SHA-256 computed while the file was written (the compress step returns it) so
    the file is not read again; otherwise the file is hashed here.
    """
    if not os.path.isfile(path):
        raise PibakeError(f"{path} does not exist; produce it before writing its checksum.")
    if digest is not None:
        digest = digest.lower()
        if not HEX64.match(digest):
            raise PibakeError(f"{digest!r} is not a SHA-256 hex digest; pass 64 hex characters or omit it.")
    else:
        digest = sha256_file(path)
    dest = dest or path + ".sha256"
    name = name or os.path.basename(path)
    if "/" in name or "\n" in name:
        raise PibakeError(f"Checksum name {name!r} must be a plain file name.")
    content = line(digest, name)
    changed = True if check_mode else write_atomic(dest, content.encode())
    if check_mode:
        try:
            with open(dest, encoding="utf-8") as handle:
                changed = handle.read() != content
        except FileNotFoundError:
            changed = True
    return {"changed": changed, "path": dest, "sha256": digest, "name": name}
