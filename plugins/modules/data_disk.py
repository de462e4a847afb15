#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: data_disk
short_description: Prepare a blank disk as the OurBox DATA disk (ext4 labelled OURBOX_DATA)
version_added: 0.1.0
description:
  - Writes a GPT partition table with one partition (from 1 MiB to the end of the disk, partition name
    C(OURBOX_DATA)) and creates an ext4 filesystem labelled C(OURBOX_DATA) in it, which the image's
    C(/etc/fstab) mounts by label at C(/var/lib/ourbox).
  - A partition rather than a filesystem on the whole disk, because the OurBox flash guide identifies the DATA disk
    as the parent disk of the C(OURBOX_DATA) partition, and because a partition table marks the disk as in use for
    every partitioning tool and installer.
  - Formats only a blank disk (no partition table, no filesystem or other signature). Anything else is refused
    unless O(force=true).
  - A disk that already holds an ext4 filesystem labelled O(label) (in a partition or on the whole disk) is left
    alone and reported unchanged, even with O(force=true); wipe it by hand (C(wipefs --all)) to start over.
  - Always refused, also with O(force=true) - a missing path, a regular file, a partition, a loop device attached
    with an offset, a read-only or empty device, the disk holding the running root filesystem, and a disk in use
    (mounted, swap, device-mapper/RAID member, backing a loop device).
  - Works without kernel partition nodes (loop devices on a build host); the filesystem is created at the
    partition's byte offset.
options:
  device:
    description: The whole disk to prepare, for example C(/dev/nvme1n1) or a C(/dev/disk/by-id/...) link.
    type: path
    required: true
  label:
    description: Filesystem label (and GPT partition name) of the data filesystem.
    type: str
    default: OURBOX_DATA
  force:
    description: Format the disk even when it holds a partition table or filesystem, destroying its contents.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Runs every check and returns the steps it would take.
  diff_mode:
    support: none
    description: Nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Linux with util-linux (sfdisk, wipefs, partx, blkid) and e2fsprogs; runs as root.
seealso:
  - module: pibake.image.flash
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Prepare the blank DATA NVMe
  pibake.image.data_disk:
    device: /dev/disk/by-id/nvme-WD_Blue_SN580_1TB_23456789ABCD

- name: Reuse a disk that held something else (destroys it)
  pibake.image.data_disk:
    device: /dev/sdb
    force: true
"""

RETURN = r"""
device:
  description: The device as given.
  returned: always
  type: str
  sample: /dev/nvme1n1
device_node:
  description: The kernel device node it resolves to.
  returned: always
  type: str
  sample: /dev/nvme1n1
label:
  description: The filesystem label.
  returned: always
  type: str
  sample: OURBOX_DATA
layout:
  description: C(partition) (GPT partition 1) or C(disk) (an existing filesystem on the whole disk).
  returned: when the disk is or was prepared
  type: str
  sample: partition
partition:
  description: Partition number of the data filesystem, 0 for the whole disk.
  returned: when the disk is or was prepared
  type: int
  sample: 1
partition_node:
  description: The name the kernel gives that partition.
  returned: when the disk was formatted
  type: str
  sample: /dev/nvme1n1p1
offset:
  description: Byte offset of the filesystem on the disk.
  returned: when the disk is or was prepared
  type: int
  sample: 1048576
size:
  description: Size of the filesystem area in bytes.
  returned: when the disk is or was prepared
  type: int
  sample: 1000203091968
uuid:
  description: Filesystem UUID.
  returned: when the disk is or was prepared
  type: str
  sample: 7881c2ff-ce31-49a3-a069-c2195e4b299d
partuuid:
  description: GPT partition GUID of the new partition.
  returned: when the disk was formatted
  type: str
  sample: ddfcd3bf-4a99-de47-9c31-8b4f2a25104e
steps:
  description: What was (or would be) done.
  returned: when the disk is (or would be) formatted
  type: list
  elements: str
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

try:
    from ansible_collections.pibake.image.plugins.module_utils import _data_disk

    IMPORT_ERROR = None
except ImportError:  # pragma: no cover - reported through fail_json
    IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            device=dict(type="path", required=True),
            label=dict(type="str", default="OURBOX_DATA"),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg="pibake.image module utilities failed to import.", exception=IMPORT_ERROR)
    params = module.params
    try:
        result = _data_disk.prepare(
            params["device"], force=params["force"], label=params["label"], check_mode=module.check_mode
        )
    except PibakeError as err:
        module.fail_json(msg=str(err))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
