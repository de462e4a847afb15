#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_free_space
short_description: Discard the free space of every filesystem in a disk image, keeping the file sparse
version_added: 0.1.0
description:
  - Deleted data left in free blocks would otherwise be stored, compressed and flashed. This step turns every
    free block of every ext4 and FAT partition of a detached raw image into a hole of the image file.
  - FAT partitions always get their free clusters (free in every FAT copy) punched, read straight from the
    allocation table; no kernel vfat is needed.
  - Runs on the controller (C(localhost)). Refuses an image that a loop device still holds.
options:
  image:
    description: Path of the raw disk image.
    type: path
    required: true
  method:
    description:
      - How ext4 free space is discarded.
      - V(punch) reads the block bitmaps with C(dumpe2fs) and punches a hole per free range; needs no root,
        loop device or mount.
      - V(fstrim) mounts the partition on an offset loop device and runs C(fstrim); the loop driver punches the
        holes. Needs root.
      - V(zerofree) writes zeros into free blocks (needs root for the loop device) and then digs them back into
        holes with C(fallocate --dig-holes).
      - V(none) leaves ext4 free space alone (FAT clusters are still punched).
    type: str
    choices: [punch, fstrim, zerofree, none]
    default: punch
  log_file:
    description: File to append timestamped progress lines to.
    type: path
notes:
  - All three methods give the same compressed size; V(punch) and V(fstrim) take well under a second, V(zerofree)
    takes seconds and rewrites the free space (see C(bench/finalize)).
  - Check mode reports the partitions that would be processed without touching the image.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Punch the free space of the shrunk image into holes
  pibake.image.image_free_space:
    image: "{{ pibake_work_dir }}/cubeos.img"

- name: Discard free space with fstrim on a loop device instead
  pibake.image.image_free_space:
    image: /srv/images/custom.img
    method: fstrim
  become: true
"""

RETURN = r"""
method:
  description: The ext4 method used.
  returned: always
  type: str
allocated_before:
  description: Bytes the image file occupied on disk before.
  returned: always
  type: int
allocated_after:
  description: Bytes the image file occupies on disk after.
  returned: always
  type: int
partitions:
  description: Per partition, its number, filesystem type, bytes discarded and seconds taken.
  returned: always
  type: list
  elements: dict
seconds:
  description: Wall time of the step.
  returned: always
  type: float
log:
  description: Progress lines.
  returned: always
  type: list
  elements: str
"""

import io

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._freespace import discard
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress
from ansible_collections.pibake.image.plugins.module_utils._signals import unwind_on_sigterm


def main():
    unwind_on_sigterm()  # fix: SIGTERM from Ansible skipped the finally that removes its offset loop device and mount
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            method=dict(type="str", default="punch", choices=["punch", "fstrim", "zerofree", "none"]),
            log_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    lines = []
    progress = Progress(module.params["log_file"], stream=io.StringIO())

    def log(message):
        lines.append(message)
        progress.log(message)

    try:
        result = discard(module.params["image"], module.params["method"], check_mode=module.check_mode, log=log)
    except PibakeError as err:
        module.fail_json(msg=str(err), log=lines)
    progress.close()
    module.exit_json(log=lines, **result)


if __name__ == "__main__":
    main()
