# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Sparse writing keeps the bytes and leaves holes for zero blocks, also at the end of the stream."""

import hashlib
import io
import os

from ansible_collections.pibake.image.plugins.module_utils._sparse import BLOCK, write_sparse


def test_zero_blocks_become_holes_and_the_bytes_are_kept(tmp_path):
    data = b"a" * BLOCK + bytes(64 * BLOCK) + b"b" * 100 + bytes(32 * BLOCK)  # ends in zeros
    digest = hashlib.sha256()
    path = tmp_path / "img"
    with open(path, "wb") as out:
        assert write_sparse(io.BytesIO(data), out, digest) == len(data)
    assert path.read_bytes() == data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    allocated = os.stat(path).st_blocks * 512
    assert allocated < 8 * BLOCK, f"{allocated} bytes allocated for {len(data)}: the zeros were written"


def test_an_empty_stream_gives_an_empty_file(tmp_path):
    path = tmp_path / "empty"
    with open(path, "wb") as out:
        assert write_sparse(io.BytesIO(b""), out) == 0
    assert path.stat().st_size == 0
