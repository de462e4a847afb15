#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: mountpoint_guard
short_description: Make an empty mountpoint unwritable so nothing lands on the root filesystem
version_added: 0.1.0
description:
  - Creates the mountpoint directory owned by root with O(mode) (C(0000) by default) and sets the immutable
    inode attribute (like C(chattr +i)), so that while the drive is absent no process, root included, can write
    into the bare directory on the root filesystem. Mounting the drive over it still works.
  - When a filesystem is already mounted on O(path) (a live device), the bare directory below is reached through
    a temporary bind mount of the filesystem that holds it; the mounted drive itself is never touched.
  - On filesystems without inode attributes (tmpfs, overlay) only the mode is set and a warning says so.
options:
  path:
    description: The mountpoint.
    type: path
    required: true
  state:
    description:
      - C(guarded) creates the directory and applies O(mode) and the immutable attribute.
      - C(unguarded) clears the immutable attribute and sets mode C(0755) (for removing the contract).
    type: str
    choices: [guarded, unguarded]
    default: guarded
  mode:
    description: Octal mode of the bare directory when guarded.
    type: str
    default: '0000'
  immutable:
    description: Set the immutable attribute when guarded.
    type: bool
    default: true
  allow_bind:
    description:
      - Reach a bare directory hidden by a mounted filesystem through a temporary bind mount. When false, a mounted
        O(path) is an error.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Reports what would change; with a filesystem mounted on O(path) it still bind-mounts to look.
  diff_mode:
    support: none
    description: No diff.
  platform:
    support: full
    platforms: posix
    description: Linux targets.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Guard the bare data mountpoint
  pibake.image.mountpoint_guard:
    path: /var/lib/ourbox
"""

RETURN = r"""
changes:
  description: What was (or in check mode would be) changed.
  returned: always
  type: list
  elements: str
  sample: [create directory, mode 0000, set immutable attribute]
mounted:
  description: Whether a filesystem was mounted on O(path).
  returned: always
  type: bool
immutable:
  description: Whether the bare directory carries the immutable attribute; null when the filesystem has no attributes.
  returned: always
  type: bool
mode:
  description: Mode of the bare directory.
  returned: always
  type: str
  sample: '0000'
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._mountpoint_guard import guard


ARGUMENT_SPEC = dict(
    path=dict(type="path", required=True),
    state=dict(type="str", choices=["guarded", "unguarded"], default="guarded"),
    mode=dict(type="str", default="0000"),
    immutable=dict(type="bool", default=True),
    allow_bind=dict(type="bool", default=True),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    try:
        mode = int(module.params["mode"], 8)
    except ValueError:
        module.fail_json(msg=f"mode {module.params['mode']!r} is not an octal number; write it like '0000'.")
    try:
        result = guard(
            module.params["path"],
            state=module.params["state"],
            mode=mode,
            immutable=module.params["immutable"],
            check_mode=module.check_mode,
            allow_bind=module.params["allow_bind"],
            log=module.warn,
        )
    except (PibakeError, OSError) as err:
        module.fail_json(msg=str(err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
