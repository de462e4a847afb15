#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_bmap
short_description: Write the block map of a sparse disk image for fast flashing with bmaptool
version_added: 0.1.0
description:
  - Runs C(bmaptool create) on the image and writes the map to O(dest) through a temporary name. With it,
    C(bmaptool copy image.img.xz /dev/sdX) writes only the mapped blocks and checks each range's SHA-256.
  - The map lists the image's data ranges, so run M(pibake.image.image_free_space) first; the map must be made
    from the very image that was compressed.
  - Runs on the controller (C(localhost)).
options:
  image:
    description: Path of the raw (sparse) disk image.
    type: path
    required: true
  dest:
    description: Path of the C(.bmap) file. Defaults to the image path with C(.img) replaced by C(.bmap).
    type: path
notes:
  - Check mode reports the destination without writing it.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Write the block map next to the compressed image
  pibake.image.image_bmap:
    image: "{{ pibake_work_dir }}/cubeos.img"
    dest: "{{ pibake_deploy_dir }}/cubeos.bmap"
"""

RETURN = r"""
path:
  description: The bmap file.
  returned: always
  type: str
image_size:
  description: Image size recorded in the map.
  returned: success and not check mode
  type: int
block_size:
  description: Block size of the map.
  returned: success and not check mode
  type: int
blocks:
  description: Number of blocks in the image.
  returned: success and not check mode
  type: int
mapped_blocks:
  description: Number of blocks bmaptool copy will write.
  returned: success and not check mode
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._bmap import create
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            dest=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    image = module.params["image"]
    dest = module.params["dest"] or (image[:-4] if image.endswith(".img") else image) + ".bmap"
    try:
        result = create(image, os.path.abspath(dest), check_mode=module.check_mode)
    except PibakeError as err:
        module.fail_json(msg=str(err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
