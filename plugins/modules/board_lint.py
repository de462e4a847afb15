#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: board_lint
short_description: Check offline that a Raspberry Pi disk image can boot, before publishing it
version_added: 0.1.0
description:
  - Reads the image file only (partition table with C(sfdisk), the FAT with mtools, the ext4 root with
    C(debugfs)); nothing is mounted or changed.
  - Checks that the disk identifier is set; that C(cmdline.txt) has C(root=) naming this image's ext4 root
    partition by PARTUUID, UUID or LABEL; that every kernel, initramfs, device tree and overlay C(config.txt)
    names exists in the FAT (or the firmware's default kernel and device trees for O(devices) when it names
    none); that every C(/etc/fstab) entry without C(nofail)/C(noauto) resolves to a partition of the image.
  - Fails with one sentence naming the first problem (all are returned in RV(problems)).
  - Runs on the controller (C(localhost)).
options:
  image:
    description: Raw disk image to check.
    type: path
    required: true
  devices:
    description: Imager device tags the image targets (selects the default kernels and device trees).
    type: list
    elements: str
    default: [pi5-64bit, pi4-64bit]
  fail_on_problems:
    description: Fail when a check fails. When false, only report.
    type: bool
    default: true
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Check that the image can boot before it is published
  pibake.image.board_lint:
    image: "{{ pibake_work_dir }}/cubeos.img"
"""

RETURN = r"""
ok:
  description: Whether every check passed.
  returned: always
  type: bool
problems:
  description: One sentence per failed check.
  returned: always
  type: list
  elements: str
checks:
  description: What the checks read (disk id, cmdline root, config.txt files, fstab entries).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils import _board_lint
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            devices=dict(type="list", elements="str", default=["pi5-64bit", "pi4-64bit"]),
            fail_on_problems=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    try:
        result = _board_lint.lint(module.params["image"], devices=module.params["devices"])
    except PibakeError as err:
        module.fail_json(msg=str(err))
    if result["problems"] and module.params["fail_on_problems"]:
        module.fail_json(msg=_board_lint.summary(result["problems"]), **result)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
