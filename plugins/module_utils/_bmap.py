# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Block maps for fast flashing: ``bmaptool create`` on the sparse image, written atomically.

``bmaptool copy IMAGE.img.xz --bmap IMAGE.bmap /dev/sdX`` then writes only the mapped blocks and checks each
range's SHA-256. The map is only as good as the image's holes: run the free-space step first.
"""

from __future__ import annotations

import os
import re
from typing import Dict

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._run import require_tools, run


def create(image: str, dest: str, *, check_mode: bool = False) -> Dict[str, object]:
    if not os.path.isfile(image):
        raise PibakeError(f"Image {image} does not exist; pass the path of the shrunk .img file.")
    require_tools("bmaptool", package_hint="install bmap-tools (bindep.txt)")
    if check_mode:
        return {"changed": True, "path": dest}
    directory = os.path.dirname(os.path.abspath(dest))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(dest)}.partial-{os.getpid()}")
    try:
        run(["bmaptool", "create", "-o", tmp, image], what=f"bmaptool create for {image}")
        with open(tmp, encoding="utf-8") as handle:
            content = handle.read()
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"changed": True, "path": dest, **summary(content)}


def summary(content: str) -> Dict[str, int]:
    """Image size, block size, block count and mapped blocks from a bmap document."""
    def number(tag: str) -> int:
        match = re.search(rf"<{tag}>\s*(\d+)\s*</{tag}>", content)
        return int(match.group(1)) if match else 0
    return {
        "image_size": number("ImageSize"),
        "block_size": number("BlockSize"),
        "blocks": number("BlocksCount"),
        "mapped_blocks": number("MappedBlocksCount"),
    }
