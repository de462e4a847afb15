#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_checksum
short_description: Write a sha256sum-compatible checksum file for an image or any other file
version_added: 0.1.0
description:
  - Writes C(<path>.sha256) containing C(<sha256>  <file name>), so C(sha256sum -c) run in the file's
    directory verifies it. The file is written through a temporary name and renamed.
  - Runs on the controller (C(localhost)).
options:
  path:
    description: The file to describe.
    type: path
    required: true
  dest:
    description: Checksum file to write. Defaults to O(path) plus C(.sha256).
    type: path
  name:
    description:
      - File name recorded in the checksum file. Defaults to the base name of O(path); set it when the file
        will be published under another name (a work copy of C(cubeos.img) published as C(cubeos.img)).
    type: str
  sha256:
    description:
      - The file's SHA-256 when it is already known (M(pibake.image.image_compress) returns both the image's and
        the compressed file's, computed while it wrote them), to avoid reading a large file again.
      - Omit it to hash the file here.
    type: str
notes:
  - Check mode reports whether the checksum file would change; it still reads the file when O(sha256) is omitted.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Write the checksum of the compressed image
  pibake.image.image_checksum:
    path: "{{ pibake_deploy_dir }}/cubeos.img.xz"
    sha256: "{{ packed.compressed_sha256 }}"

- name: Hash and write the checksum of a file
  pibake.image.image_checksum:
    path: /srv/images/custom.img
"""

RETURN = r"""
path:
  description: The checksum file written.
  returned: always
  type: str
sha256:
  description: The SHA-256 it contains.
  returned: always
  type: str
name:
  description: The file name recorded in it.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._checksum import write_checksum
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            dest=dict(type="path"),
            name=dict(type="str"),
            sha256=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    try:
        result = write_checksum(module.params["path"], digest=module.params["sha256"], dest=module.params["dest"],
                                name=module.params["name"], check_mode=module.check_mode)
    except PibakeError as err:
        module.fail_json(msg=str(err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
