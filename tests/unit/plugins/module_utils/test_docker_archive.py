# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""docker-archive reading and verification."""

import hashlib
import io
import json
import tarfile

import pytest

from ansible_collections.pibake.image.plugins.module_utils._docker_archive import archive_info, file_sha256
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_archive(path, *, arch="arm64", tamper=False, drop_layer=False, images=1):
    layer = b"layer-bytes"
    layer_name = hashlib.sha256(layer).hexdigest() + ".tar"
    config = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers"}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": ["test/busybox:1"], "Layers": [layer_name]}] * images
    with tarfile.open(path, "w") as tar:
        _add(tar, config_name, config + (b" " if tamper else b""))
        if not drop_layer:
            _add(tar, layer_name, layer)
        _add(tar, "manifest.json", json.dumps(manifest).encode())
    return "sha256:" + hashlib.sha256(config).hexdigest()


def test_reads_id_tags_and_platform(tmp_path):
    path = tmp_path / "a.tar"
    image_id = make_archive(path)
    info = archive_info(str(path))
    assert info["image_id"] == image_id
    assert info["repo_tags"] == ["test/busybox:1"]
    assert (info["architecture"], info["os"], info["layers"]) == ("arm64", "linux", 1)
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(str(path))


@pytest.mark.parametrize("kwargs", [{"tamper": True}, {"drop_layer": True}, {"images": 2}])
def test_broken_archives_are_refused(tmp_path, kwargs):
    path = tmp_path / "b.tar"
    make_archive(path, **kwargs)
    with pytest.raises(PibakeError):
        archive_info(str(path))


def test_not_a_tar(tmp_path):
    path = tmp_path / "c.tar"
    path.write_bytes(b"nope")
    with pytest.raises(PibakeError):
        archive_info(str(path))
