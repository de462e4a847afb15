#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
---
module: base_image
short_description: Resolve the base image of a build to a raw .img in the pibake cache
description:
  - Turns O(source) (the C(pibake_base_image) variable) into a raw C(.img) file under C(<cache_dir>/base/).
  - C(type=debian), the default, builds a Raspberry Pi-style Debian arm64 image with mmdebstrap from a Debian
    mirror (components C(main non-free-firmware)) - MBR partition table, FAT32 partition 1 labelled C(bootfs)
    with the firmware, kernel, initrd, DTBs, C(config.txt) and C(cmdline.txt) (C(root=PARTUUID=...)) placed by
    Debian's C(raspi-firmware), ext4 partition 2 labelled C(rootfs), C(/etc/fstab) by PARTUUID, C(python3), and a
    first-boot service that grows the root partition and filesystem to fill the disk. The entry is cached by a
    digest of the recipe (release, mirror, packages, sizes, code version), so a second run reuses it.
  - C(type=url) downloads the file (resuming an interrupted download with HTTP Range), verifies its sha256,
    unpacks it when compressed and caches the raw image by that sha256.
  - C(type=path) takes a local C(.img), C(.img.xz), C(.img.zst), C(.img.gz) or C(.zip) holding exactly one C(.img),
    checks its sha256 when given, and unpacks it into the cache keyed by the sha256 of the given file.
  - Cache entries are written under temporary names and renamed when complete, so an entry is whole or absent.
  - Progress lines (step, percent, elapsed time) go to O(progress_file), or to stderr when it is not set; the
    module's stdout carries only its JSON result.
  - Building the Debian base needs root and an active qemu-aarch64 binfmt registration; it uses no loop device
    and no kernel FAT support.
version_added: 0.1.0
author:
  - pibake developers (@pibake)
options:
  source:
    description:
      - 'The base image, usually C({{ pibake_base_image }}). Empty means C({type: debian}).'
      - 'C(type=url): keys C(url) (http or https, required), C(sha256) (required), C(release) (informational).'
      - 'C(type=path): keys C(path) (required), C(sha256) (optional, checked when given), C(release)
        (informational).'
      - 'C(type=debian): keys C(release) (C(trixie) default, or C(bookworm)), C(mirror) (default
        U(http://deb.debian.org/debian)), C(extra_packages) (list of Debian package names added to the base),
        C(boot_size_mib) (FAT size, default 512), C(root_free_mib) (free space left in the root filesystem,
        default 512), C(hostname) (default C(raspberrypi)).'
    type: dict
    default: {type: debian}
  cache_dir:
    description:
      - The pibake cache; base images go to its C(base/) folder, downloads to C(downloads/).
      - When not set, C($PIBAKE_CACHE_DIR) or C(~/.cache/pibake) of the user running the module.
    type: path
  progress_file:
    description:
      - File to append progress lines to. When not set they go to stderr.
    type: path
attributes:
  check_mode:
    support: full
    description: Can run in check mode and then reports what it would change, changing nothing.
    details: Reports whether the entry is cached; builds, downloads and unpacks nothing.
  diff_mode:
    support: none
    description: The module returns no diff.
notes:
  - Runs on the build host (usually C(localhost)).
  - A failure is reported as one sentence naming the fix (sha256 mismatch, download failure, unknown type, corrupt
    archive, not a disk image, binfmt not active...).
"""

EXAMPLES = r"""
- name: Build or reuse the default Debian trixie base image
  pibake.image.base_image:
    source: "{{ pibake_base_image | default({'type': 'debian'}) }}"
    progress_file: "{{ pibake_work_dir }}/base-image.progress"
  register: base

- name: Use a Raspberry Pi OS image downloaded from a mirror
  pibake.image.base_image:
    source:
      type: url
      url: https://downloads.example.org/images/2025-05-13-raspios-bookworm-arm64-lite.img.xz
      sha256: 62d025b9bc7ca0e1facfec74ae56ac13978b6745c58177f081d39fbb8041ed45
      release: bookworm

- name: Use a local image file
  pibake.image.base_image:
    source:
      type: path
      path: /srv/images/raspios-lite.img.zst
    cache_dir: /var/cache/pibake
"""

RETURN = r"""
path:
  description: The raw base image in the cache. Copy it before changing it.
  returned: always
  type: str
  sample: /root/.cache/pibake/base/debian-trixie-arm64-3f2a9c0d1e4b5a67.img
sha256:
  description: sha256 of the raw image. Null in check mode when the entry is not cached yet.
  returned: always
  type: str
  sample: 5b1c0e6e2b7a4f1f0f3d1f1a1a0b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b
source:
  description: One line saying where the image came from.
  returned: always
  type: str
  sample: debian trixie arm64 from http://deb.debian.org/debian (main non-free-firmware), recipe 3f2a9c0d1e4b5a67
release:
  description: The Debian release for C(type=debian); for url and path the C(release) given, else null.
  returned: always
  type: str
  sample: trixie
built:
  description: True when the image was built, downloaded or unpacked by this run; false when it came from the cache.
  returned: always
  type: bool
cache_key:
  description: Name of the cache entry (recipe key for debian, the input file's sha256 for url and path).
  returned: always
  type: str
timings:
  description: Seconds per step of this run (for example C(mmdebstrap), C(initramfs), C(assemble), C(checksum),
    C(download), C(unpack)); empty when the entry was cached.
  returned: always
  type: dict
  sample: {mmdebstrap: 412.3, initramfs: 301.8, assemble: 21.4, checksum: 4.1}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._base_image import resolve
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._progress import Progress


def main():
    module = AnsibleModule(
        argument_spec=dict(
            source=dict(type="dict", default={"type": "debian"}),
            cache_dir=dict(type="path"),
            progress_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    progress = Progress(module.params["progress_file"])
    try:
        # The build attaches what this returns: refuse a GPT image or one without an ext4 root before it is cached.
        result = resolve(module.params["source"], module.params["cache_dir"], progress, check_mode=module.check_mode,
                         check_layout=True)
    except PibakeError as err:
        module.fail_json(msg=str(err), timings=dict(progress.timings))
    finally:
        progress.close()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
