#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: cmdline_option
short_description: Set or remove one option of the Raspberry Pi kernel command line (cmdline.txt)
version_added: 0.1.0
description:
  - C(cmdline.txt) is a single line of space-separated tokens (C(key) or C(key=value)). This module edits one
    option and keeps every other token where it was.
  - Without O(multiple), an option appears at most once; an existing token with the same key is replaced in
    place and later duplicates are dropped. With O(multiple) (options that may repeat, such as C(console)),
    the exact token C(option=value) is ensured present or absent.
options:
  path:
    description: The cmdline.txt file.
    type: path
    default: /boot/firmware/cmdline.txt
  option:
    description: Option name, the part before C(=) (for example C(cfg80211.ieee80211_regdom) or C(quiet)).
    type: str
    required: true
  value:
    description: Option value; leave unset for a flag without C(=).
    type: str
  state:
    description: Whether the option is present or absent.
    type: str
    choices: [present, absent]
    default: present
  multiple:
    description: The option may appear several times; O(value) tells the occurrences apart.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Can run in check mode and then reports what it would change, changing nothing.
  diff_mode:
    support: full
    description: Returns the change as a before/after diff when run with C(--diff).
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Set the Wi-Fi regulatory domain on the kernel command line
  pibake.image.cmdline_option:
    option: cfg80211.ieee80211_regdom
    value: DE

- name: Drop the splash screen
  pibake.image.cmdline_option:
    option: splash
    state: absent

- name: Add a second console without touching the first
  pibake.image.cmdline_option:
    option: console
    value: ttyAMA0,115200
    multiple: true
"""

RETURN = r"""
cmdline:
  description: The command line after the edit (without the newline).
  returned: success
  type: str
  sample: console=serial0,115200 root=PARTUUID=0badcafe-02 rootwait cfg80211.ieee80211_regdom=DE
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._cmdline import edit_text
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/boot/firmware/cmdline.txt"),
            option=dict(type="str", required=True),
            value=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            multiple=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    if not os.path.isfile(path):
        module.fail_json(msg=f"{path} does not exist; mount the boot partition at /boot/firmware or set path.")
    with open(path, "r", encoding="utf-8") as handle:
        before = handle.read()
    try:
        after, changed = edit_text(before, module.params["option"], module.params["value"],
                                   module.params["state"], module.params["multiple"])
    except PibakeError as err:
        module.fail_json(msg=str(err))
    result = dict(changed=changed, cmdline=after.strip())
    if module._diff:
        result["diff"] = dict(before=before, after=after, before_header=path, after_header=path)
    if changed and not module.check_mode:
        tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.pibake-tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(after)
        module.atomic_move(tmp, path)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
