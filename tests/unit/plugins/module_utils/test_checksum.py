# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""_checksum: sha256sum-compatible files."""

import hashlib
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _checksum
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def test_checksum_file_passes_sha256sum_check(tmp_path):
    path = tmp_path / "os.img.xz"
    path.write_bytes(b"payload" * 1000)
    result = _checksum.write_checksum(str(path))
    assert result["path"] == str(path) + ".sha256" and result["changed"]
    assert result["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    subprocess.run(["sha256sum", "-c", "--strict", "os.img.xz.sha256"], cwd=tmp_path, check=True, capture_output=True)
    assert not _checksum.write_checksum(str(path))["changed"]                 # same content: untouched
    path.write_bytes(b"tampered")
    assert subprocess.run(["sha256sum", "-c", "os.img.xz.sha256"], cwd=tmp_path, capture_output=True,
                          check=False).returncode == 1


def test_known_digest_and_published_name(tmp_path):
    path = tmp_path / "work-copy.img"
    path.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    dest = tmp_path / "cubeos.img.sha256"
    result = _checksum.write_checksum(str(path), digest=digest.upper(), dest=str(dest), name="cubeos.img")
    assert dest.read_text() == f"{digest}  cubeos.img\n" and result["name"] == "cubeos.img"
    assert _checksum.parse(dest.read_text()) == {"cubeos.img": digest}
    assert _checksum.parse(f"{digest} *bin.img\n") == {"bin.img": digest}
    with pytest.raises(PibakeError, match="not a SHA-256"):
        _checksum.write_checksum(str(path), digest="1234")
    with pytest.raises(PibakeError, match="plain file name"):
        _checksum.write_checksum(str(path), name="../x")
    with pytest.raises(PibakeError, match="does not exist"):
        _checksum.write_checksum(str(tmp_path / "missing"))
