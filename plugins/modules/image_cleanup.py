#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: image_cleanup
short_description: Remove caches, logs, temp files, histories and the device identity from an image
version_added: 0.1.0
description:
  - Removes what a finished image must not carry and reports how much space that freed.
  - Walks directories without following symlinks and never touches anything on another filesystem (bind
    mounts of the image session, a mounted data drive).
  - Idempotent - a second run on a clean system changes nothing.
options:
  root:
    description: Root of the system to clean (C(/) inside the chroot or on a device; a directory in tests).
    type: path
    default: /
  apt_cache:
    description: Remove C(/var/cache/apt/*.bin) and downloaded C(.deb) archives.
    type: bool
    default: true
  apt_lists:
    description: Remove the package lists under C(/var/lib/apt/lists) (C(apt update) brings them back).
    type: bool
    default: true
  logs:
    description: Truncate log files under C(/var/log) to zero bytes and remove rotated or compressed ones.
    type: bool
    default: true
  journal:
    description: Remove persistent journal files below C(/var/log/journal), keeping the directory itself.
    type: bool
    default: true
  tmp:
    description: Remove the contents of C(/tmp) and C(/var/tmp).
    type: bool
    default: true
  shell_histories:
    description: Remove shell and tool histories (C(.bash_history), C(.python_history), ...) of root and of C(/home/*).
    type: bool
    default: true
  ssh_host_keys:
    description: Remove C(/etc/ssh/ssh_host_*) so every device generates its own keys on first boot.
    type: bool
    default: true
  machine_id:
    description:
      - Empty C(/etc/machine-id) (the file stays, empty, so systemd generates an ID on first boot) and replace a
        regular C(/var/lib/dbus/machine-id) with a symlink to it.
    type: bool
    default: true
  remove:
    description: More absolute paths or glob patterns (inside O(root)) to remove, files or directory trees.
    type: list
    elements: str
    default: []
attributes:
  check_mode:
    support: full
    description: Reports what would be removed and how much it would free.
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
- name: Remove caches, logs and the identity from the image
  pibake.image.image_cleanup:
    remove:
      - /var/lib/systemd/random-seed
  register: cleanup_result

- name: Report the space freed
  ansible.builtin.debug:
    msg: "{{ cleanup_result.freed_human }} freed"
"""

RETURN = r"""
freed_bytes:
  description: Allocated bytes of the removed or truncated files (would be freed, in check mode).
  returned: always
  type: int
  sample: 73400320
freed_human:
  description: RV(freed_bytes) for people.
  returned: always
  type: str
  sample: 70.0 MiB
fs_free_before:
  description: Free bytes of the filesystem holding O(root) before the run.
  returned: always
  type: int
fs_free_after:
  description: Free bytes of the filesystem holding O(root) after the run.
  returned: always
  type: int
fs_freed_bytes:
  description: Growth of the filesystem's free space during the run (0 in check mode).
  returned: always
  type: int
categories:
  description: Per category, counts of removed, truncated and replaced entries and the bytes freed.
  returned: always
  type: dict
  sample: {apt_lists: {removed: 12, truncated: 0, replaced: 0, bytes: 70000000}}
left_alone:
  description: Paths left alone because they were on another filesystem or outside O(root).
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._image_cleanup import cleanup, human_bytes


ARGUMENT_SPEC = dict(
    root=dict(type="path", default="/"),
    apt_cache=dict(type="bool", default=True),
    apt_lists=dict(type="bool", default=True),
    logs=dict(type="bool", default=True),
    journal=dict(type="bool", default=True),
    tmp=dict(type="bool", default=True),
    shell_histories=dict(type="bool", default=True),
    ssh_host_keys=dict(type="bool", default=True),
    machine_id=dict(type="bool", default=True),
    remove=dict(type="list", elements="str", default=[]),
)


def _own_payload():
    """The file or directory this module runs from (Ansible's payload zip below ~/.ansible/tmp): never removed."""
    path = os.path.abspath(__file__)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    params = dict(module.params)
    try:
        result = cleanup(check_mode=module.check_mode, protect=[_own_payload()], **params)
    except (PibakeError, OSError) as err:
        module.fail_json(msg=str(err))
    result["freed_human"] = human_bytes(result["freed_bytes"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
