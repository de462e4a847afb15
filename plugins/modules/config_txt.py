#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: config_txt
short_description: Set or remove one setting of the Raspberry Pi config.txt inside a conditional section
version_added: 0.1.0
description:
  - Edits one setting line of C(config.txt) within the sections of one conditional filter (C([all]), C([pi5]),
    C([cm4])...) and keeps every other line, comment and section where it was.
  - A line is matched by its identity, the part naming the setting. C(dtparam=NAME=...) is matched by
    C(dtparam=NAME), C(dtoverlay=NAME,...) by C(dtoverlay=NAME), C(key=value) by C(key), and a line without
    C(=) by its first word.
  - With O(state=present), the last matching line of the section is replaced in place; when there is none, the
    line goes at the end of the last section with that filter, or a new section is appended to the file. The
    lines before the first filter count as C([all]).
options:
  path:
    description: The config.txt file.
    type: path
    default: /boot/firmware/config.txt
  line:
    description: The whole setting line, for example C(dtparam=pciex1_gen=3) or C(arm_boost=1).
    type: str
    required: true
  section:
    description: Conditional filter, without or with brackets (C(all), C(pi5), C([cm4])).
    type: str
    default: all
  state:
    description: Whether the setting is present or absent in that section.
    type: str
    choices: [present, absent]
    default: present
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
- name: Run the Pi 5 PCIe bus at gen 3 for NVMe
  pibake.image.config_txt:
    line: dtparam=pciex1_gen=3
    section: pi5

- name: Turn the hardware watchdog on
  pibake.image.config_txt:
    line: dtparam=watchdog=on

- name: Remove the audio parameter
  pibake.image.config_txt:
    line: dtparam=audio=on
    state: absent
"""

RETURN = r"""
identity:
  description: The identity the line was matched by.
  returned: success
  type: str
  sample: dtparam=pciex1_gen
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._configtxt import edit_text, identity
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/boot/firmware/config.txt"),
            line=dict(type="str", required=True),
            section=dict(type="str", default="all"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        supports_check_mode=True,
    )
    path = module.params["path"]
    if not os.path.isfile(path):
        module.fail_json(msg=f"{path} does not exist; mount the boot partition at /boot/firmware or set path.")
    with open(path, "r", encoding="utf-8") as handle:
        before = handle.read()
    try:
        after, changed = edit_text(before, module.params["line"], module.params["section"], module.params["state"])
    except PibakeError as err:
        module.fail_json(msg=str(err))
    result = dict(changed=changed, identity=identity(module.params["line"]))
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
