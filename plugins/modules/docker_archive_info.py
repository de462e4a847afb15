#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: docker_archive_info
short_description: Read and verify a docker-archive file (image ID, tags, platform, file digest)
version_added: 0.1.0
description:
  - Opens a C(docker load)-able archive (as C(skopeo copy ... docker-archive:FILE:NAME:TAG) writes it),
    recomputes the image ID from the image config blob and checks that every layer named in
    C(manifest.json) is present.
  - Used by the M(pibake.image.docker) role on the build host to record what the device must see after
    C(docker load).
options:
  path:
    description: The archive.
    type: path
    required: true
  architecture:
    description: Fail unless the image is for this architecture (C(arm64)); empty accepts any.
    type: str
    default: ""
attributes:
  check_mode:
    support: full
    description: Only reads the archive, so it runs the same in check mode.
  diff_mode:
    support: none
    description: The module returns no diff.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Read the preload archive
  pibake.image.docker_archive_info:
    path: ~/.cache/pibake/preload/busybox.tar
    architecture: arm64
  delegate_to: localhost
  register: archive
"""

RETURN = r"""
image_id:
  description: The image ID C(docker image inspect) shows after loading (sha256 of the config blob).
  returned: success
  type: str
  sample: sha256:3f57d9401f8d42f986df300f0c69192fc41da28ccc8d797829467780db3dd741
repo_tags:
  description: Names the image gets when loaded.
  returned: success
  type: list
  elements: str
architecture:
  description: Image architecture from its config.
  returned: success
  type: str
os:
  description: Image operating system from its config.
  returned: success
  type: str
layers:
  description: Number of layers.
  returned: success
  type: int
sha256:
  description: sha256 of the archive file.
  returned: success
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._docker_archive import archive_info
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", required=True),
            architecture=dict(type="str", default=""),
        ),
        supports_check_mode=True,
    )
    try:
        info = archive_info(module.params["path"])
    except PibakeError as err:
        module.fail_json(msg=str(err))
    wanted = module.params["architecture"]
    if wanted and info["architecture"] != wanted:
        module.fail_json(msg=f"{module.params['path']} holds a {info['architecture']} image, not {wanted}; "
                             "pull it with the right platform.", **info)
    module.exit_json(changed=False, **info)


if __name__ == "__main__":
    main()
