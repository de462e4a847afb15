#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: target_facts
short_description: Tell the roles whether they configure an image or a live device
version_added: 0.1.0
description:
  - Sets the fact C(pibake_mode) to C(image) when the host is reached through a chroot connection (an image
    being built) and to C(device) otherwise (a running device over SSH).
  - Runs on the controller only (action plugin); it costs no remote call, which matters under qemu emulation.
  - 'Roles call it once at the start, guarded by C(when: pibake_mode is not defined).'
options: {}
attributes:
  check_mode:
    support: full
    description: Only sets facts.
  diff_mode:
    support: none
    description: Nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Any target.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Detect whether we customize an image or a device
  pibake.image.target_facts:
  when: pibake_mode is not defined
"""

RETURN = r"""
ansible_facts:
  description: Facts set for the host.
  returned: always
  type: dict
  contains:
    pibake_mode:
      description: C(image) or C(device).
      type: str
      sample: image
    pibake_image_root:
      description: Host path of the image root in image mode, empty in device mode.
      type: str
      sample: /work/main/build/cubeos-dev/root
"""
