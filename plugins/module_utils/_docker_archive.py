# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Read and verify a ``docker load``-able archive (docker-archive format, as written by ``skopeo copy``).

The archive's ``manifest.json`` names the image config blob; the image ID Docker shows after ``docker load`` is
the sha256 of that config blob. ``archive_info`` recomputes it from the blob itself, so a corrupt or mislabelled
archive is caught on the build host, long before a device loads it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from typing import Any, Dict, List

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

_CHUNK = 1024 * 1024


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _member_bytes(tar: tarfile.TarFile, name: str, path: str) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise PibakeError(f"{path} has no {name}; it is not a docker-archive, pull it again.") from None
    handle = tar.extractfile(member)
    if handle is None:
        raise PibakeError(f"{path}: {name} is not a regular file; pull the image again.")
    return handle.read()


def archive_info(path: str) -> Dict[str, Any]:
    """``image_id`` (``sha256:...`` of the config), ``repo_tags``, ``architecture``, ``os``, ``layers``,
    ``sha256`` of the archive file. Raises PibakeError when the archive is not what it claims."""
    try:
        tar = tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as err:
        raise PibakeError(f"{path} is not a readable tar archive ({err}); pull the image again.") from None
    with tar:
        try:
            manifest = json.loads(_member_bytes(tar, "manifest.json", path))
        except ValueError:
            raise PibakeError(f"{path}: manifest.json is not JSON; pull the image again.") from None
        if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
            raise PibakeError(f"{path} must hold exactly one image; write one archive per image.")
        entry = manifest[0]
        config_name = entry.get("Config", "")
        config = _member_bytes(tar, config_name, path)
        image_id = "sha256:" + hashlib.sha256(config).hexdigest()
        named = config_name.rsplit("/", 1)[-1].split(".", 1)[0]
        if named and len(named) == 64 and not image_id.endswith(named):
            raise PibakeError(f"{path}: config blob {config_name} does not match its digest; pull the image again.")
        try:
            cfg = json.loads(config)
        except ValueError:
            raise PibakeError(f"{path}: image config is not JSON; pull the image again.") from None
        layers: List[str] = list(entry.get("Layers") or [])
        for layer in layers:
            try:
                tar.getmember(layer)
            except KeyError:
                raise PibakeError(f"{path} lacks layer {layer}; pull the image again.") from None
    return {
        "image_id": image_id,
        "repo_tags": list(entry.get("RepoTags") or []),
        "architecture": cfg.get("architecture", ""),
        "os": cfg.get("os", ""),
        "layers": len(layers),
        "sha256": file_sha256(path),
    }
