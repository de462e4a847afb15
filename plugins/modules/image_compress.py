#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_compress
short_description: Compress a disk image with xz or zstd and prove it decompresses to the same bytes
version_added: 0.1.0
description:
  - The compressor (C(xz -T0) by default, or C(zstd --long=27)) reads the image file itself and writes a
    temporary file next to O(dest); the image is hashed at the same time from the page cache. The temporary file
    is then hashed and decompressed (C(xz -dc -T0) or C(zstd -dc)) and the output hashed again. O(dest) appears
    (by rename) only when the decompressed stream has the image's length and SHA-256.
  - Progress lines (read, written, rate, time left; from the compressor's position in the image) go to
    O(log_file) every O(progress_interval) seconds.
  - Runs on the controller (C(localhost)).
options:
  image:
    description: Path of the raw disk image (normally shrunk and with its free space discarded).
    type: path
    required: true
  dest:
    description: Output path. Defaults to the image path plus C(.xz) or C(.zst).
    type: path
  format:
    description: Compressor. Raspberry Pi Imager, C(bmaptool) and C(xzcat | dd) read both.
    type: str
    choices: [xz, zstd]
    default: xz
  level:
    description: Compression level; defaults to 6 for xz (0-9) and 19 for zstd (1-22).
    type: int
  threads:
    description: Compressor threads; 0 means one per CPU core.
    type: int
    default: 0
  block_size_mib:
    description:
      - xz only. Size of the independent blocks xz -T cuts the input into (xz's default is three times the
        dictionary, 24 MiB at level 6). Larger blocks compress a little better and more slowly (each block starts
        with an empty match finder); any xz decompresses the result.
    type: int
  verify:
    description: Decompress the output once it is written and compare SHA-256 and length with the image.
    type: bool
    default: true
  progress_interval:
    description: Seconds between progress lines.
    type: float
    default: 15
  log_file:
    description: File to append timestamped progress lines to.
    type: path
notes:
  - Check mode reports the output path without compressing.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Compress the finished image with xz into the deploy directory
  pibake.image.image_compress:
    image: "{{ pibake_work_dir }}/cubeos.img"
    dest: "{{ pibake_deploy_dir }}/cubeos.img.xz"
    log_file: "{{ pibake_work_dir }}/build.log"
  register: packed

- name: Compress with zstd level 19 for fast decompression
  pibake.image.image_compress:
    image: /srv/images/custom.img
    format: zstd
    level: 19
"""

RETURN = r"""
output:
  description: Path of the compressed image.
  returned: always
  type: str
image_size:
  description: Size of the image in bytes (Imager's extract_size).
  returned: always
  type: int
image_sha256:
  description: SHA-256 of the image (Imager's extract_sha256).
  returned: success and not check mode
  type: str
compressed_size:
  description: Size of the compressed file in bytes.
  returned: success and not check mode
  type: int
compressed_sha256:
  description: SHA-256 of the compressed file.
  returned: success and not check mode
  type: str
verified:
  description: Whether the output was decompressed and compared with the image.
  returned: success and not check mode
  type: bool
command:
  description: The compressor command line.
  returned: success and not check mode
  type: str
seconds:
  description: Wall time of the step.
  returned: success and not check mode
  type: float
log:
  description: Progress lines.
  returned: always
  type: list
  elements: str
"""

import io

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._compress import compress
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress
from ansible_collections.pibake.image.plugins.module_utils._signals import unwind_on_sigterm


def main():
    unwind_on_sigterm()  # fix: SIGTERM from Ansible skipped the finally that removes its half-written output
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            dest=dict(type="path"),
            format=dict(type="str", default="xz", choices=["xz", "zstd"]),
            level=dict(type="int"),
            threads=dict(type="int", default=0),
            block_size_mib=dict(type="int"),
            verify=dict(type="bool", default=True),
            progress_interval=dict(type="float", default=15),
            log_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    lines = []
    progress = Progress(params["log_file"], stream=io.StringIO())

    def log(message):
        lines.append(message)
        progress.log(message)

    level = params["level"] if params["level"] is not None else (6 if params["format"] == "xz" else 19)
    block = params["block_size_mib"] * 2**20 if params["block_size_mib"] else None
    try:
        if block and params["format"] != "xz":
            raise PibakeError("block_size_mib applies to xz only; drop it or use format xz.")
        result = compress(params["image"], params["dest"], fmt=params["format"], level=level,
                          threads=params["threads"], block_size=block, verify=params["verify"],
                          progress_interval=params["progress_interval"], check_mode=module.check_mode, log=log)
    except PibakeError as err:
        module.fail_json(msg=str(err), log=lines)
    progress.close()
    module.exit_json(log=lines, **result)


if __name__ == "__main__":
    main()
