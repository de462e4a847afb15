#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: deploy_outputs
short_description: Move a build's finished files into the deploy folder atomically
version_added: 0.1.0
description:
  - Each file is written under a hidden temporary name in the deploy folder; once all of them are there they are
    renamed into place one after the other with SIGINT, SIGTERM and SIGHUP held, so a reader (or a build killed
    half-way) never sees a half-written output nor a mix of two releases. Sparse files stay sparse.
  - The build log is copied with any line that looks like it carries a password, token or secret masked.
  - Runs on the build host.
options:
  deploy_dir:
    description: Output folder.
    type: path
    required: true
  files:
    description: Files to publish.
    type: list
    elements: dict
    default: []
    suboptions:
      src:
        description: The finished file.
        type: path
        required: true
      name:
        description: Its name in O(deploy_dir).
        type: str
        required: true
  stage_dir:
    description: Folder holding the files named in O(names) (a staging folder filled by earlier tasks).
    type: path
  names:
    description: Files of O(stage_dir) to publish under the same names, next to O(files).
    type: list
    elements: str
  build_log:
    description: The run's log to publish as C(build.log) (the C(pibake.image.build_log) callback writes it).
    type: path
  move:
    description: Move the files (rename when on the same filesystem) instead of copying them.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: Reports what would be written.
  diff_mode:
    support: none
    description: Nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Build host.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Publish the image and its description
  pibake.image.deploy_outputs:
    deploy_dir: deploy
    files:
      - src: build/x/image.img
        name: cubeos-dev-dev.img
    build_log: "{{ lookup('ansible.builtin.env', 'PIBAKE_BUILD_LOG') }}"
"""

RETURN = r"""
written:
  description: Paths written in the deploy folder.
  returned: always
  type: list
  elements: str
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._outputs import publish, remove_partials


def main():
    module = AnsibleModule(
        argument_spec=dict(
            deploy_dir=dict(type="path", required=True),
            files=dict(
                type="list", elements="dict", default=[],
                options=dict(src=dict(type="path", required=True), name=dict(type="str", required=True)),
            ),
            stage_dir=dict(type="path"),
            names=dict(type="list", elements="str"),
            build_log=dict(type="path"),
            move=dict(type="bool", default=True),
        ),
        required_by={"names": "stage_dir"},
        supports_check_mode=True,
    )
    params = module.params
    files = list(params["files"]) + [
        {"src": os.path.join(params["stage_dir"], name), "name": name} for name in params["names"] or []
    ]
    names = [entry["name"] for entry in files] + (["build.log"] if params["build_log"] else [])
    if module.check_mode:
        module.exit_json(changed=True, written=[os.path.join(params["deploy_dir"], name) for name in names])
    try:
        remove_partials(params["deploy_dir"])
        written = publish(params["deploy_dir"], files, params["build_log"], move=params["move"])
    except PibakeError as err:
        module.fail_json(msg=str(err))
    module.exit_json(changed=True, written=written)


if __name__ == "__main__":
    main()
