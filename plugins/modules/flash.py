#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: flash
short_description: Write a disk image to a whole disk safely, never to the DATA disk
version_added: 0.1.0
description:
  - Writes a Raspberry Pi disk image (C(.img), C(.img.xz), C(.img.zst), C(.img.gz), recognised by their first
    bytes, or an OCI reference that is pulled first) to a whole disk, on a build host or on a running Raspberry Pi
    (for example flashing the SYSTEM NVMe while booted from the SD card).
  - "Refuses, with one sentence saying why and what to do: a missing path, a regular file, a partition (also a
    loop device attached with an offset or size limit, which shows one partition of its file), a device with no
    medium or read-only, the disk holding the running root filesystem, a disk in use (a partition mounted, active
    swap, held by device-mapper/RAID, backing a loop device, or claimed by the kernel), a disk holding a filesystem
    labelled C(OURBOX_DATA) on the whole disk or on any partition, and a disk smaller than the uncompressed image."
  - Partitions are read from the disk's own partition table and probed by byte offset (C(partx), C(blkid -p -O)),
    so the checks do not depend on the kernel creating partition nodes.
  - Nothing is written unless O(confirm=true). Without it, or in check mode, the module runs every check and
    says what it would do.
  - When a bmap (from C(bmaptool create)) lies next to the image it writes only the ranges the bmap marks as used
    and checks each against the bmap's checksum; without one it writes the whole image. The disk is held open
    exclusively while writing, written with direct I/O, synced, then every written range is read back from the
    disk and compared.
  - With O(new_disk_id=true) the disk gets a fresh random identifier (MBR disk id, or GPT disk and partition
    GUIDs) and C(root=PARTUUID=) in the FAT's C(cmdline.txt) and the PARTUUIDs in the root's C(/etc/fstab) are
    rewritten to match, so two disks flashed from one image never share PARTUUIDs.
options:
  image:
    description:
      - Path of the image file, or an OCI reference (C(oci://registry/repo:tag), or C(registry/repo:tag) when no
        such file exists) of a pibake OS artifact. Compression is recognised by content, not by name.
    type: str
    required: true
  device:
    description:
      - The whole disk to overwrite, for example C(/dev/nvme0n1) or a stable C(/dev/disk/by-id/...) link.
    type: path
    required: true
  confirm:
    description:
      - Must be C(true) for anything to be written. Without it the module only checks and describes.
    type: bool
    default: false
  bmap:
    description:
      - Path of the bmap file. Default is to look for C(<image>.bmap), C(<image without .xz/.zst/.gz>.bmap) and
        C(<name without .img>.bmap) next to the image.
    type: path
  use_bmap:
    description:
      - Use a bmap when one is found. C(false) writes every byte of the image, like C(dd).
    type: bool
    default: true
  verify:
    description:
      - Read the written ranges back from the disk and compare their checksums.
    type: bool
    default: true
  new_disk_id:
    description:
      - Give the written disk a fresh random disk identifier and rewrite the PARTUUIDs in C(cmdline.txt) and
        C(/etc/fstab) to match.
    type: bool
    default: false
  progress_file:
    description:
      - File to append progress lines to (percent written, MiB/s); follow it with C(tail -f). Default is the
        module's standard error, which Ansible does not show.
    type: path
  pull_dir:
    description:
      - Folder for an image pulled from an OCI reference. Default C($PIBAKE_CACHE_DIR/downloads/flash) or
        C(~/.cache/pibake/downloads/flash).
    type: path
attributes:
  check_mode:
    support: full
    description: Runs every check and returns the steps it would take; writes nothing.
  diff_mode:
    support: none
    description: A disk image has no meaningful diff.
  platform:
    support: full
    platforms: posix
    description: Linux with util-linux, e2fsprogs, mtools, and xz/zstd for compressed images; runs as root.
notes:
  - Flashing from an OCI reference needs the collection's OCI pull support; where it is missing the module fails
    with a sentence saying so, and the artifact has to be pulled first.
seealso:
  - module: pibake.image.data_disk
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Check the SYSTEM disk and describe the flash (writes nothing)
  pibake.image.flash:
    image: /root/os.img.xz
    device: /dev/disk/by-id/nvme-Samsung_SSD_980_S64ANS0T123456

- name: Flash the SYSTEM disk with a fresh disk identifier
  pibake.image.flash:
    image: /root/os.img.xz
    device: /dev/disk/by-id/nvme-Samsung_SSD_980_S64ANS0T123456
    confirm: true
    new_disk_id: true
    progress_file: /run/pibake/flash.progress
"""

RETURN = r"""
flashed:
  description: Whether the image was written.
  returned: always
  type: bool
  sample: true
verified:
  description: Whether the written ranges were read back and matched.
  returned: always
  type: bool
  sample: true
device:
  description: The device as given.
  returned: always
  type: str
  sample: /dev/disk/by-id/nvme-Samsung_SSD_980_S64ANS0T123456
device_node:
  description: The kernel device node it resolves to.
  returned: always
  type: str
  sample: /dev/nvme0n1
device_size:
  description: Size of the disk in bytes.
  returned: always
  type: int
  sample: 500107862016
image:
  description: Path of the image file that was (or would be) written.
  returned: always
  type: str
  sample: /root/os.img.xz
reference:
  description: The OCI reference the image was pulled from, empty for a file.
  returned: always
  type: str
  sample: ""
image_size:
  description: Uncompressed size of the image in bytes.
  returned: always
  type: int
  sample: 2147483648
compression:
  description: C(none), C(xz), C(zstd) or C(gzip).
  returned: always
  type: str
  sample: xz
bmap:
  description: Path of the bmap used, or null.
  returned: always
  type: str
  sample: /root/os.img.bmap
mapped_bytes:
  description: Bytes the bmap marks as used (the image size without a bmap).
  returned: always
  type: int
  sample: 1211760640
bytes_written:
  description: Bytes written to the disk.
  returned: always
  type: int
  sample: 1211760640
steps:
  description: What the flash does (or would do), in order.
  returned: always
  type: list
  elements: str
seconds:
  description: Seconds spent writing, verifying, re-identifying and in total; empty when nothing was written.
  returned: always
  type: dict
  sample: {write: 21.3, verify: 4.2, disk_id: 0.4, total: 26.1}
disk_id:
  description:
    - C(label), C(old) and C(new) disk identifier, C(partuuids) (old to new) and the C(files) rewritten; empty
      unless O(new_disk_id) was applied.
  returned: always
  type: dict
  sample: {label: dos, old: "0x5eed0001", new: "0x9c1d44e2", partuuids: {"5eed0001-02": "9c1d44e2-02"}, files: []}
msg:
  description: One sentence saying what was done, or what would be done and how to confirm it.
  returned: always
  type: str
  sample: Wrote 1.1 GiB of 2.0 GiB image to /dev/nvme0n1 in 21.3 s (96 MiB/s of image), verified.
"""

import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

try:
    from ansible_collections.pibake.image.plugins.module_utils import _flash
    from ansible_collections.pibake.image.plugins.module_utils._progress import Progress

    IMPORT_ERROR = None
except ImportError:  # pragma: no cover - reported through fail_json
    IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            image=dict(type="str", required=True),
            device=dict(type="path", required=True),
            confirm=dict(type="bool", default=False),
            bmap=dict(type="path"),
            use_bmap=dict(type="bool", default=True),
            verify=dict(type="bool", default=True),
            new_disk_id=dict(type="bool", default=False),
            progress_file=dict(type="path"),
            pull_dir=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg="pibake.image module utilities failed to import.", exception=IMPORT_ERROR)
    params = module.params
    try:
        with Progress(params["progress_file"]) as progress:
            result = _flash.flash(
                params["image"],
                params["device"],
                confirm=params["confirm"],
                check_mode=module.check_mode,
                bmap=params["bmap"],
                use_bmap=params["use_bmap"],
                verify=params["verify"],
                new_disk_id=params["new_disk_id"],
                pull_dir=params["pull_dir"],
                progress=progress,
            )
    except PibakeError as err:
        module.fail_json(msg=str(err), flashed=False)
    for warning in result.pop("warnings", []):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
