#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: imager_manifest
short_description: Write Raspberry Pi Imager repository files for a compressed image
version_added: 0.1.0
description:
  - Writes O(manifest) (default C(rpi-imager.json)), an C(os_list) with one entry to publish next to the image,
    and O(local_manifest) (default C(os_list_local.json)), the same entry with a C(file://) URL to the local
    compressed image, for offline use with C(rpi-imager --repo <path>) or Imager's "Use custom file".
  - The entry carries name, description, url, icon, release_date, extract_size, extract_sha256,
    image_download_size, image_download_sha256, devices and init_format. Imager 2.x offers OS customisation
    only for entries with an C(init_format) and drops entries whose C(init_format) it does not know.
  - Runs on the controller (C(localhost)). Files are written through a temporary name and renamed.
options:
  image:
    description:
      - The uncompressed image, for extract_size and extract_sha256 unless O(image_size) and O(image_sha256) are
        given.
    type: path
    required: true
  compressed:
    description: The compressed image Imager downloads.
    type: path
    required: true
  dest_dir:
    description: Directory to write the manifests in. Defaults to the directory of O(compressed).
    type: path
  published_dir:
    description:
      - Directory the compressed image will be published in, for the C(file://) URL of O(local_manifest).
        Defaults to the directory of O(compressed); set it when the outputs are staged and moved afterwards.
    type: path
    version_added: 0.2.0
  name:
    description: OS name shown in Imager.
    type: str
    required: true
  description:
    description: One-line description shown in Imager.
    type: str
    default: ""
  url:
    description:
      - Download URL of the compressed image as published. Defaults to its file name (relative to the
        manifest).
    type: str
  icon:
    description: Icon URL (http(s) or file://) shown in Imager.
    type: str
    default: ""
  website:
    description: Project web site shown in Imager.
    type: str
  release_date:
    description: Release date, C(YYYY-MM-DD). Defaults to today (UTC).
    type: str
  devices:
    description: Imager device tags the image supports.
    type: list
    elements: str
    default: [pi5-64bit, pi4-64bit]
  init_format:
    description:
      - How Imager customises the image. V(systemd) (a firstrun script run through C(systemd.run)),
        V(cloudinit), V(cloudinit-rpi), V(rpi-preseed), V(none) or an empty string for no customisation.
    type: str
    choices: [systemd, cloudinit, cloudinit-rpi, rpi-preseed, none, ""]
    default: systemd
  image_size:
    description: Size of the uncompressed image in bytes, when known (image_compress returns it).
    type: int
  image_sha256:
    description: SHA-256 of the uncompressed image, when known.
    type: str
  compressed_sha256:
    description: SHA-256 of the compressed image, when known.
    type: str
  manifest:
    description: File name of the published manifest.
    type: str
    default: rpi-imager.json
  local_manifest:
    description: File name of the offline manifest; an empty string skips it.
    type: str
    default: os_list_local.json
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Write the Imager manifests next to the compressed image
  pibake.image.imager_manifest:
    image: "{{ pibake_work_dir }}/cubeos.img"
    compressed: "{{ pibake_deploy_dir }}/cubeos.img.xz"
    name: CubeOS 0.1.0
    description: CubeOS appliance for Raspberry Pi 4 and 5
    url: https://releases.example.com/cubeos/0.1.0/cubeos.img.xz
    image_size: "{{ packed.image_size }}"
    image_sha256: "{{ packed.image_sha256 }}"
    compressed_sha256: "{{ packed.compressed_sha256 }}"
"""

RETURN = r"""
manifest:
  description: Path of the published manifest.
  returned: always
  type: str
local_manifest:
  description: Path of the offline manifest.
  returned: when written
  type: str
entry:
  description: The os_list entry.
  returned: always
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils import _imager
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="path", required=True),
            compressed=dict(type="path", required=True),
            dest_dir=dict(type="path"),
            published_dir=dict(type="path"),
            name=dict(type="str", required=True),
            description=dict(type="str", default=""),
            url=dict(type="str"),
            icon=dict(type="str", default=""),
            website=dict(type="str"),
            release_date=dict(type="str"),
            devices=dict(type="list", elements="str", default=["pi5-64bit", "pi4-64bit"]),
            init_format=dict(type="str", default="systemd",
                             choices=["systemd", "cloudinit", "cloudinit-rpi", "rpi-preseed", "none", ""]),
            image_size=dict(type="int"),
            image_sha256=dict(type="str"),
            compressed_sha256=dict(type="str"),
            manifest=dict(type="str", default="rpi-imager.json"),
            local_manifest=dict(type="str", default="os_list_local.json"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    compressed = os.path.abspath(p["compressed"])
    try:
        item = _imager.entry(name=p["name"], description=p["description"],
                             url=p["url"] or os.path.basename(compressed), image=p["image"], compressed=compressed,
                             icon=p["icon"], release_date=p["release_date"], devices=p["devices"],
                             init_format=p["init_format"], website=p["website"], image_sha256=p["image_sha256"],
                             compressed_sha256=p["compressed_sha256"], image_size=p["image_size"])
        published = os.path.join(os.path.abspath(p["published_dir"]), os.path.basename(compressed)) \
            if p["published_dir"] else compressed
        result = _imager.write(p["dest_dir"] or os.path.dirname(compressed), item, published,
                               manifest=p["manifest"], local_manifest=p["local_manifest"] or None,
                               check_mode=module.check_mode)
    except PibakeError as err:
        module.fail_json(msg=str(err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
