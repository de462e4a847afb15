# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Copy a stream into a file leaving holes where it holds only zeros, so disk images stay sparse."""

from __future__ import annotations

import os

BLOCK = 64 * 1024  # small enough to find the holes between files of an ext4 image
READ_SIZE = 4 * 1024 * 1024
_ZERO = bytes(BLOCK)


def write_sparse(reader, writer, digest=None, block: int = BLOCK) -> int:
    """Copy binary ``reader`` to binary ``writer``, seeking over all-zero blocks; returns the bytes copied.

    ``digest`` (a hashlib object), when given, is updated with every byte, holes included. The file is truncated
    to the copied size at the end: a stream that ends in zeros still gives a file of the right length.
    """
    zero = _ZERO if block == BLOCK else bytes(block)
    size = 0
    while True:
        chunk = reader.read(max(block, READ_SIZE))
        if not chunk:
            break
        if digest is not None:
            digest.update(chunk)
        for at in range(0, len(chunk), block):
            part = chunk[at:at + block]
            if part == zero[:len(part)]:
                writer.seek(len(part), os.SEEK_CUR)
            else:
                writer.write(part)
        size += len(chunk)
    writer.truncate(size)
    return size
