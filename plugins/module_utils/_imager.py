# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Raspberry Pi Imager repository files: ``rpi-imager.json`` (to publish next to the image) and
``os_list_local.json`` (points at the local file, for offline flashing with ``rpi-imager --repo``).

Imager 2.x hides OS customisation for entries without a valid ``init_format`` and drops entries whose
``init_format`` it does not know, so the value is validated here.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from typing import Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils._checksum import sha256_file, write_atomic
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

INIT_FORMATS = ("systemd", "cloudinit", "cloudinit-rpi", "rpi-preseed", "none", "")
DEVICE_TAG = re.compile(r"^pi[0-9a-z]*-(32|64)bit$")
DEFAULT_DEVICES = ["pi5-64bit", "pi4-64bit"]


def entry(*, name: str, description: str, url: str, image: str, compressed: str, icon: str = "",
          release_date: Optional[str] = None, devices: Optional[List[str]] = None, init_format: str = "systemd",
          website: Optional[str] = None, image_sha256: Optional[str] = None,
          compressed_sha256: Optional[str] = None, image_size: Optional[int] = None) -> Dict[str, object]:
    """One os_list entry describing ``compressed`` (what Imager downloads) and ``image`` (what it writes)."""
    if init_format not in INIT_FORMATS:
        raise PibakeError(f"init_format {init_format!r} is unknown to Raspberry Pi Imager; use one of "
                          f"{', '.join(repr(f) for f in INIT_FORMATS)}.")
    devices = list(devices if devices is not None else DEFAULT_DEVICES)
    bad = [d for d in devices if not DEVICE_TAG.match(d)]
    if bad:
        raise PibakeError(f"Device tag(s) {', '.join(bad)} are not Imager tags; use tags like pi5-64bit, pi4-64bit.")
    if not os.path.isfile(compressed):
        raise PibakeError(f"{compressed} does not exist; run the compress step first.")
    if image_size is None:
        if not os.path.isfile(image):
            raise PibakeError(f"{image} does not exist; pass image_size and image_sha256 or keep the .img.")
        image_size = os.path.getsize(image)
    release_date = release_date or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    if not re.match(r"^\d{4}-\d{2}-\d{2}$", release_date):
        raise PibakeError(f"release_date {release_date!r} must be YYYY-MM-DD.")
    item: Dict[str, object] = {
        "name": name,
        "description": description,
        "url": url,
        "icon": icon,
        "release_date": release_date,
        "extract_size": image_size,
        "extract_sha256": (image_sha256 or sha256_file(image)).lower(),
        "image_download_size": os.path.getsize(compressed),
        "image_download_sha256": (compressed_sha256 or sha256_file(compressed)).lower(),
        "devices": devices,
        "init_format": init_format,
    }
    if website:
        item["website"] = website
    return item


def document(item: Dict[str, object]) -> bytes:
    return (json.dumps({"os_list": [item]}, indent=2) + "\n").encode()


def write(dest_dir: str, item: Dict[str, object], compressed: str, *, manifest: str = "rpi-imager.json",
          local_manifest: Optional[str] = "os_list_local.json", check_mode: bool = False) -> Dict[str, object]:
    """Write the published manifest and the offline one (whose url is the local file)."""
    os.makedirs(dest_dir, exist_ok=True)
    paths = {"manifest": os.path.join(dest_dir, manifest)}
    local = dict(item)
    local["url"] = "file://" + os.path.abspath(compressed)
    changed = False
    if not check_mode:
        changed |= write_atomic(paths["manifest"], document(item))
        if local_manifest:
            paths["local_manifest"] = os.path.join(dest_dir, local_manifest)
            changed |= write_atomic(paths["local_manifest"], document(local))
    return {"changed": changed or check_mode, "entry": item, **paths}
