#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: image_session
short_description: Attach a Raspberry Pi disk image for customization through a chroot, and detach it
version_added: 0.1.0
description:
  - C(state=attached) grows the image if asked, attaches the root partition with an offset loop device (the
    kernel's partition scanning is never relied on), mounts it, makes the FAT boot partition available at
    C(/boot/firmware) (kernel vfat where the kernel has it, otherwise an mtools staging folder written back on
    detach), mounts C(/proc), C(/sys), C(/dev), C(/dev/pts) and a fresh tmpfs C(/run), provides DNS for the
    build, installs a C(policy-rc.d) guard, and checks that the image's binaries can run (qemu-user binfmt).
  - Every loop device and mount is recorded in a lease under C(/run/pibake/leases) before it is made. A guard
    process tears the session down if the owning C(ansible-playbook) dies (Ctrl-C, SIGTERM, SIGKILL).
  - C(state=detached) undoes everything exactly, restoring the image's own C(resolv.conf) and C(policy-rc.d),
    trimming free space and writing the boot files back.
  - C(state=reaped) tears down sessions whose owner is dead (what C(playbooks/clean.yml) runs). It never
    touches a loop device or mount that pibake did not record.
  - Runs on the build host (C(localhost)) as root.
options:
  state:
    description: What to do.
    type: str
    choices: [attached, detached, reaped]
    default: attached
  image:
    description: Raw disk image to attach (MBR, FAT partition 1, ext4 partition 2). Mutually exclusive with O(root_dir).
    type: path
  root_dir:
    description:
      - A plain root filesystem folder to prepare instead of an image (used by molecule scenarios).
    type: path
  work_dir:
    description:
      - Folder for mountpoints and the boot staging folder. Defaults to C(<image>.d).
    type: path
  grow:
    description: Grow the image and its root partition and filesystem by this much first (C(1G), C(512M), C(0)).
    type: str
    default: "0"
  arch:
    description:
      - Architecture of the image's programs (C(aarch64) for Raspberry Pi OS arm64). C(native) skips the check.
    type: str
    default: aarch64
  dns:
    description: Give the build the host's resolver configuration; the image's own is restored on detach.
    type: bool
    default: true
  persistent:
    description:
      - Keep the session when the owning playbook ends (molecule instances); it lasts until C(state=detached)
        or C(playbooks/clean.yml -e pibake_clean_persistent=true).
    type: bool
    default: false
  lease:
    description:
      - Lease file of the session to detach (returned by C(state=attached)).
      - With C(state=reaped), reap only this session, whoever owns it.
    type: path
  write_back:
    description: With C(state=detached), write changed boot files back to the image.
    type: bool
    default: true
  trim:
    description: With C(state=detached), discard the root filesystem's free blocks (keeps the image sparse).
    type: bool
    default: true
  min_free:
    description:
      - Refuse an image whose root filesystem has less free room than this after growing, as too full to
        customize (C(16M); C(0) for no check).
    type: str
    default: "0"
  copy_from:
    description:
      - Create O(image) as a sparse copy of this base image first (its folder too, when missing). The lease is
        written before the copy starts, so a build killed while copying leaves nothing a reap cannot find; every
        check of the image layout runs on this file before anything is written.
    type: path
  discard_dir:
    description:
      - The build's working folder. When the session is reaped because its owner died, this folder (holding the
        half-built image copy) is deleted, once nothing is mounted below it.
      - After C(state=detached) such a session keeps its lease (state C(detached), nothing attached) for as long
        as the folder is in use; C(state=reaped) with O(lease) ends it and deletes the folder.
    type: path
  include_persistent:
    description: With C(state=reaped), also reap persistent sessions.
    type: bool
    default: false
attributes:
  check_mode:
    support: none
    description: Attaching cannot be simulated.
  diff_mode:
    support: none
    description: Nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Linux build host.
notes:
  - Needs root, C(losetup), C(mount), C(sfdisk), C(e2fsprogs), C(mtools), C(dosfstools) and for arm64 images
    qemu-user-static with binfmt-support (C(make deps) installs them).
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Attach the working image
  pibake.image.image_session:
    image: build/cubeos-dev/image.img
    grow: 1G
  register: session

- name: Detach it again
  pibake.image.image_session:
    state: detached
    lease: "{{ session.lease }}"

- name: Reap what killed builds left behind
  pibake.image.image_session:
    state: reaped
"""

RETURN = r"""
root:
  description: Host path of the mounted root filesystem (the chroot connection's host).
  returned: state=attached
  type: str
  sample: /work/main/build/cubeos-dev/image.img.d/root
boot:
  description: Host path of C(/boot/firmware) inside the root.
  returned: state=attached
  type: str
lease:
  description: Lease file of the session.
  returned: state=attached
  type: str
boot_mode:
  description: C(vfat) (kernel mount) or C(mtools) (staging folder written back on detach).
  returned: state=attached and an image was attached
  type: str
loops:
  description: Loop devices attached.
  returned: state=attached
  type: list
  elements: str
reaped:
  description: Lease ids reaped.
  returned: state=reaped
  type: list
  elements: str
summary:
  description: What detach did (processes killed, trimmed, FAT rewritten).
  returned: state=detached
  type: dict
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._signals import unwind_on_sigterm

try:
    from ansible_collections.pibake.image.plugins.module_utils import _guard, _lease, _session
    from ansible_collections.pibake.image.plugins.module_utils._partitions import parse_size
    IMPORT_ERROR = None
except ImportError:  # pragma: no cover - reported through fail_json
    IMPORT_ERROR = traceback.format_exc()


def main():
    # Fix: an attach cut short by SIGTERM (Ansible passes it on when ansible-playbook is interrupted) left its loops
    # and mounts for the next build or clean.yml; unwinding runs the attach's own teardown (its except clause).
    unwind_on_sigterm()
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["attached", "detached", "reaped"], default="attached"),
            image=dict(type="path"),
            root_dir=dict(type="path"),
            work_dir=dict(type="path"),
            grow=dict(type="str", default="0"),
            arch=dict(type="str", default="aarch64"),
            dns=dict(type="bool", default=True),
            persistent=dict(type="bool", default=False),
            lease=dict(type="path"),
            write_back=dict(type="bool", default=True),
            trim=dict(type="bool", default=True),
            include_persistent=dict(type="bool", default=False),
            discard_dir=dict(type="path"),
            copy_from=dict(type="path"),
            min_free=dict(type="str", default="0"),
        ),
        mutually_exclusive=[("image", "root_dir")],
        required_if=[("state", "detached", ("lease",))],
        supports_check_mode=False,
    )
    if IMPORT_ERROR:
        module.fail_json(msg="pibake.image module utilities failed to import.", exception=IMPORT_ERROR)
    params = module.params
    try:
        if params["state"] == "reaped" and params["lease"]:
            gone = _session.reap(params["lease"]) if os.path.exists(params["lease"]) else False
            module.exit_json(changed=gone, reaped=[os.path.basename(params["lease"])[:-5]] if gone else [])
        if params["state"] == "reaped":
            reaped = _session.reap_stale(include_persistent=params["include_persistent"])
            module.exit_json(changed=bool(reaped), reaped=reaped)
        if params["state"] == "detached":
            summary = _session.detach(params["lease"], write_back=params["write_back"], trim=params["trim"])
            module.exit_json(changed=True, summary=summary)
        if not params["image"] and not params["root_dir"]:
            module.fail_json(msg="Give image (a disk image) or root_dir (a root folder) to attach.")
        _session.reap_stale()
        if params["image"]:
            session = _session.attach_image(
                params["image"],
                params["work_dir"] or params["image"] + ".d",
                grow_bytes=parse_size(params["grow"]),
                arch=params["arch"],
                dns=params["dns"],
                persistent=params["persistent"],
                discard_dir=params["discard_dir"] or "",
                copy_from=params["copy_from"] or "",
                min_free_bytes=parse_size(params["min_free"]),
            )
        else:
            session = _session.attach_dir(
                params["root_dir"], arch=params["arch"], dns=params["dns"], persistent=params["persistent"]
            )
        lease_path = _lease.path_of(session.record)
        try:
            guard_pid = 0 if params["persistent"] else _guard.start_guard(lease_path)
        except BaseException:  # interrupted before a guard watches the session: undo it now
            _session.reap(lease_path)
            raise
        record = session.record
        module.exit_json(
            changed=True,
            root=record["root"],
            boot=os.path.join(str(record["root"]), "boot", "firmware"),
            lease=lease_path,
            boot_mode=record.get("boot_mode"),
            loops=[entry["device"] for entry in record["loops"]],
            guard_pid=guard_pid,
        )
    except PibakeError as err:
        module.fail_json(msg=str(err))


if __name__ == "__main__":
    main()
