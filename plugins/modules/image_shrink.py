#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_shrink
short_description: Shrink the root filesystem, its partition and the image file, and arm first-boot expansion
version_added: 0.1.0
description:
  - Works on a detached raw disk image (C(.img)) whose last partition is an ext4 root. Refuses an image that a
    loop device still holds.
  - Runs C(e2fsck -f -p), finds the smallest size the filesystem provably fits in (trial shrinks on a
    metadata-only C(e2image) copy, each checked with C(e2fsck -fn); this goes below C(resize2fs -M), which stops
    at about 1.5 times the used blocks), adds O(margin_mib), shrinks the filesystem through an offset loop
    device, checks it again, shrinks the partition entry with C(sfdisk) and truncates the file.
  - Then arms the root expansion the image performs at its first boot (see O(expansion)) and checks the
    filesystem a last time.
  - Runs on the controller (C(localhost)); needs root for the loop device.
options:
  image:
    description: Path of the raw disk image to shrink in place.
    type: path
    required: true
  margin_mib:
    description: Free space, in MiB, left in the root filesystem above its minimum size.
    type: int
    default: 64
  expansion:
    description:
      - Which first-boot expansion to arm.
      - V(auto) detects it; fails when the image has none.
      - V(raspios) adds C(init=/usr/lib/raspberrypi-sys-mods/firstboot) to C(cmdline.txt) and links the
        C(resize2fs_once) service.
      - V(systemd) arms every enabled systemd unit that grows the root (the Debian base's, the firstboot
        role's) by creating the paths of its C(ConditionPathExists=) lines and removing its
        C(ConditionPathExists=!) done-stamps.
      - V(cloud-init) relies on cloud-init's growpart; V(none) arms nothing.
    type: str
    choices: [auto, raspios, systemd, cloud-init, none]
    default: auto
  log_file:
    description: File to append timestamped progress lines to.
    type: path
notes:
  - Check mode computes the target size and the expansion actions without changing the image.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Shrink the finished image to its minimum plus 64 MiB
  pibake.image.image_shrink:
    image: "{{ pibake_work_dir }}/cubeos.img"
  become: true
  register: shrink

- name: Shrink a Raspberry Pi OS image with a larger margin
  pibake.image.image_shrink:
    image: /srv/images/raspios.img
    margin_mib: 256
    expansion: raspios
"""

RETURN = r"""
size_before:
  description: Image file size before, in bytes.
  returned: always
  type: int
size_after:
  description: Image file size after, in bytes.
  returned: always
  type: int
blocks_before:
  description: Root filesystem size before, in blocks of RV(block_size).
  returned: always
  type: int
blocks_after:
  description: Root filesystem size after, in blocks.
  returned: always
  type: int
minimum_blocks:
  description: Smallest size found to fit (before the margin).
  returned: always
  type: int
estimate_blocks:
  description: What C(resize2fs -P) estimated (where C(resize2fs -M) would stop).
  returned: always
  type: int
block_size:
  description: Filesystem block size in bytes.
  returned: always
  type: int
expansion:
  description: The first-boot expansion mechanism and the changes made to arm it.
  returned: always
  type: dict
  sample:
    mechanism: systemd
    changed: true
    actions: ["pibake-grow-root.service: created /var/lib/pibake/grow-root"]
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
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress
from ansible_collections.pibake.image.plugins.module_utils._shrink import MIB, shrink
from ansible_collections.pibake.image.plugins.module_utils._signals import unwind_on_sigterm


def main():
    unwind_on_sigterm()  # fix: SIGTERM from Ansible skipped the finally that removes its offset loop device and /dev/shm trial folder
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            margin_mib=dict(type="int", default=64),
            expansion=dict(type="str", default="auto", choices=["auto", "raspios", "systemd", "cloud-init", "none"]),
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
        if module.params["margin_mib"] < 0:
            raise PibakeError("margin_mib must be 0 or more.")
        result = shrink(module.params["image"], margin=module.params["margin_mib"] * MIB,
                        expansion=module.params["expansion"], check_mode=module.check_mode, log=log)
    except PibakeError as err:
        module.fail_json(msg=str(err), log=lines)
    progress.close()
    module.exit_json(log=lines, **result)


if __name__ == "__main__":
    main()
