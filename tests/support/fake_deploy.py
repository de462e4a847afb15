# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""A fake ``deploy/`` folder as a build leaves it, with a large os.img.xz stand-in.

The stand-in is deterministic pseudo-random data (incompressible, like real xz output) written in 1 MiB blocks
with every fourth block left as a hole, so a 320 MiB file costs ~240 MB of disk and ~3 s to write.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Dict

MIB = 1024 * 1024
OS_INFO = (
    'NAME="ourbox-mini"\nSKU="ourbox-mini"\nVARIANT="dev"\nVERSION="1.4.0"\nBUILD_TIME="2026-11-20T08:30:00Z"\n'
    'GIT_REVISION="0123456789abcdef0123456789abcdef01234567"\nBASE_IMAGE="raspios-bookworm-arm64-lite"\n'
    'BASE_IMAGE_SHA256="' + "ab" * 32 + '"\nPROFILE="ourbox-mini"\n'
)


def sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 * MIB), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


def write_standin(path: str, mib: int, seed: int = 6) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as fh:
        for block in range(mib):
            if block % 4 == 3:
                fh.seek(MIB, os.SEEK_CUR)
            else:
                fh.write(rng.randbytes(MIB))
        fh.truncate(mib * MIB)


def make_deploy(folder: str, big_mib: int, seed: int = 6) -> str:
    """os.img.xz (``big_mib`` MiB), its .sha256, os.info, build.log, a CycloneDX SBOM and a bmap."""
    os.makedirs(folder)
    image = os.path.join(folder, "os.img.xz")
    write_standin(image, big_mib, seed)
    with open(os.path.join(folder, "os.img.xz.sha256"), "w", encoding="utf-8") as fh:
        fh.write(f"{sha256_file(image).split(':', 1)[1]}  os.img.xz\n")
    with open(os.path.join(folder, "os.info"), "w", encoding="utf-8") as fh:
        fh.write(OS_INFO)
    with open(os.path.join(folder, "build.log"), "w", encoding="utf-8") as fh:
        fh.write("".join(f"2026-11-20 08:{i // 60:02d}:{i % 60:02d} TASK step {i}\n" for i in range(2000)))
    with open(os.path.join(folder, "sbom.cdx.json"), "w", encoding="utf-8") as fh:
        json.dump({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [{"name": "bash"}]}, fh)
    with open(os.path.join(folder, "os.img.bmap"), "w", encoding="utf-8") as fh:
        fh.write('<?xml version="1.0" ?>\n<bmap version="2.0"></bmap>\n')
    return folder


def digests(folder: str) -> Dict[str, str]:
    return {name: sha256_file(os.path.join(folder, name)) for name in os.listdir(folder)}
