#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_sbom
short_description: Write a CycloneDX SBOM of the Debian packages installed in an image
version_added: 0.1.0
description:
  - Reads C(/var/lib/dpkg/status) from the image's root partition without mounting it (C(debugfs) at the
    partition's offset), or from a mounted root directory, and writes a CycloneDX JSON document built with
    cyclonedx-python-lib; one component per installed package with a C(pkg:deb) package URL, the image as the
    metadata component.
  - The serial number is derived from the content and the timestamp honours C(SOURCE_DATE_EPOCH), so the same
    image gives the same file. Written through a temporary name and renamed.
  - Runs on the controller (C(localhost)); needs cyclonedx-python-lib in the controller's Python.
options:
  image:
    description: Raw disk image to read. One of O(image) and O(root_dir) is required.
    type: path
  root_dir:
    description: A mounted root filesystem to read instead of an image.
    type: path
  dest:
    description: Path of the SBOM file (conventionally C(<name>.cdx.json)).
    type: path
    required: true
  name:
    description: Name of the image (the BOM's metadata component).
    type: str
    required: true
  version:
    description: Version of the image.
    type: str
    default: "0"
  distro:
    description: Namespace of the package URLs (C(pkg:deb/<distro>/...)).
    type: str
    default: debian
  schema:
    description: CycloneDX specification version.
    type: str
    choices: ["1.4", "1.5", "1.6"]
    default: "1.6"
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Write the SBOM of the finished image
  pibake.image.image_sbom:
    image: "{{ pibake_work_dir }}/cubeos.img"
    dest: "{{ pibake_deploy_dir }}/cubeos.cdx.json"
    name: cubeos
    version: 0.1.0
"""

RETURN = r"""
path:
  description: The SBOM file.
  returned: always
  type: str
packages:
  description: Number of installed packages listed.
  returned: always
  type: int
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.pibake.image.plugins.module_utils import _sbom
from ansible_collections.pibake.image.plugins.module_utils._checksum import write_atomic
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

try:
    import cyclonedx  # noqa: F401  pylint: disable=unused-import
    HAS_CYCLONEDX = True
except ImportError:
    HAS_CYCLONEDX = False


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path"),
            root_dir=dict(type="path"),
            dest=dict(type="path", required=True),
            name=dict(type="str", required=True),
            version=dict(type="str", default="0"),
            distro=dict(type="str", default="debian"),
            schema=dict(type="str", default="1.6", choices=["1.4", "1.5", "1.6"]),
        ),
        required_one_of=[("image", "root_dir")],
        mutually_exclusive=[("image", "root_dir")],
        supports_check_mode=True,
    )
    if not HAS_CYCLONEDX:
        module.fail_json(msg=missing_required_lib("cyclonedx-python-lib"))
    p = module.params
    try:
        packages = _sbom.parse_status(_sbom.read_status(p["image"], p["root_dir"]))
        document = _sbom.build(packages, name=p["name"], version=p["version"], distro=p["distro"], schema=p["schema"])
        changed = True
        if not module.check_mode:
            os.makedirs(os.path.dirname(os.path.abspath(p["dest"])), exist_ok=True)
            changed = write_atomic(p["dest"], document.encode())
    except PibakeError as err:
        module.fail_json(msg=str(err))
    module.exit_json(changed=changed, path=p["dest"], packages=len(packages))


if __name__ == "__main__":
    main()
