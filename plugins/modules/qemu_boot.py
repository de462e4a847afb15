#!/usr/bin/python
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

DOCUMENTATION = r"""
---
module: qemu_boot
short_description: Boot a built image in QEMU (arm64, software emulation) and reach it over SSH
version_added: 0.1.0
description:
  - C(state=started) without O(vm) makes a test machine from O(image), which is only read. In a temporary folder
    below O(work_dir) it copies the image sparsely (decompressing C(.xz), C(.zst) or C(.gz)), makes the copy's disk
    bigger by O(grow) (like flashing onto a bigger card, so the first boot has to expand the root filesystem),
    generates an ed25519 key and writes its public half into the admin user's C(~/.ssh/authorized_keys) inside the
    copy (debugfs, nothing is mounted), and makes a blank data disk (C(mkfs.ext4 -L) O(data_disk_label)) when
    O(data_disk) is set.
  - It then boots the copy with C(qemu-system-aarch64 -M virt) and direct kernel boot. The kernel and initrd are
    the image's own when C(config.txt) names a generic arm64 kernel (the Debian base image); otherwise a Debian
    test kernel is used, extracted from Debian's C(linux-image-arm64) package and cached below O(cache_dir). The
    kernel command line is the image's C(cmdline.txt) with its consoles replaced by C(console=ttyAMA0). Disks are
    virtio (the system disk is C(vda), the data disk C(vdb)); user-mode networking forwards a free port on
    127.0.0.1 to the guest's port 22; the serial console goes to a log file. The module waits for the login
    prompt and for SSH with the injected key, each within O(boot_timeout).
  - C(state=started) with O(vm) boots an existing, stopped test machine again (its second boot).
  - C(state=stopped) powers the guest off (C(systemctl poweroff) over SSH, then the virtual power button, then
    the process is ended after O(stop_timeout)) and keeps the machine's disks for another boot.
  - C(state=absent) ends qemu at once and deletes the test machine's folder.
  - C(state=reaped) deletes every test machine whose owner process is gone.
  - A guard process launches qemu and owns the machine. When the owner (O(owner_pid), by default the
    C(ansible-playbook) running this task) dies, by a failure, Ctrl-C or kill -9, the guard ends qemu and deletes
    the machine's folder within a second. Machine records live in C(/run/pibake/vms) (C(PIBAKE_VM_DIR)).
options:
  state:
    description: What to do.
    type: str
    choices: [started, stopped, absent, reaped]
    default: started
  image:
    description:
      - The image to boot (C(.img), C(.img.xz), C(.img.zst) or C(.img.gz)), with a FAT boot partition 1 and an ext4
        root partition 2. Required with C(state=started) unless O(vm) is given.
    type: path
  vm:
    description:
      - Record of an existing test machine (the RV(vm) this module returned). Required with C(state=stopped) and
        C(state=absent); with C(state=started) the machine boots again.
    type: path
  work_dir:
    description: Folder in which the machine's temporary folder C(pibake-boot-*) is made.
    type: path
  owner_pid:
    description:
      - The process whose end destroys the machine. Default (V(0)) is the C(ansible-playbook) running the task.
    type: int
    default: 0
  grow:
    description: Make the copy's disk this much bigger (C(512M), C(1G)); V(0) keeps the image's size.
    type: str
    default: "0"
  data_disk:
    description:
      - Attach a second disk with a blank ext4 filesystem labelled O(data_disk_label) (default V(false)).
      - With O(vm), whether the data disk the machine was prepared with is attached at this boot; when not given,
        the machine boots with the disks it had.
    type: bool
  data_disk_size:
    description: Size of the data disk (sparse).
    type: str
    default: 256M
  data_disk_label:
    description: Label of the data disk's filesystem.
    type: str
    default: OURBOX_DATA
  ssh_user:
    description:
      - User whose C(authorized_keys) receives the key. V(auto) is the admin user of the C(pibake.image.base) role
        (its sudo rule), else the first login user with a home folder, else C(root). V(none) injects nothing and
        boots without waiting for SSH.
    type: str
    default: auto
  ssh_public_key:
    description: A public key to inject instead of a generated one (RV(ssh_private_key) is then empty).
    type: str
  simulate_wifi:
    description:
      - Give the guest a simulated Wi-Fi radio as C(wlan0) (Linux C(mac80211_hwsim), loaded through
        C(/etc/modules-load.d) in the copy), for images that start an access point on first boot.
    type: bool
    default: false
  kernel:
    description:
      - V(auto) boots the image's own kernel when it is a generic arm64 kernel, else the Debian test kernel.
        V(image) fails when the image has no generic kernel; V(debian) always uses the test kernel.
    type: str
    choices: [auto, image, debian]
    default: auto
  kernel_release:
    description: Debian release of the test kernel.
    type: str
    default: trixie
  append:
    description: Extra kernel command line arguments.
    type: str
    default: ""
  memory:
    description: Guest memory in MiB.
    type: int
    default: 2048
  smp:
    description: Guest CPUs.
    type: int
    default: 2
  cpu:
    description: QEMU CPU model.
    type: str
    default: cortex-a72
  restrict_network:
    description: Cut the guest off from everything but the forwarded SSH port (QEMU C(restrict=on)).
    type: bool
    default: false
  wait_for:
    description: What C(state=started) waits for.
    type: str
    choices: [ssh, login, none]
    default: ssh
  boot_timeout:
    description: Seconds to wait for the login prompt and SSH.
    type: int
    default: 600
  stop_timeout:
    description: Seconds C(state=stopped) waits for the guest to power off before ending qemu.
    type: int
    default: 120
  cache_dir:
    description: Cache folder for the Debian test kernel. Default C($PIBAKE_CACHE_DIR) or C(~/.cache/pibake).
    type: path
attributes:
  check_mode:
    support: full
    description: In check mode nothing is copied, booted or stopped; the module reports what it would do.
  diff_mode:
    support: none
    description: Nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Linux host with C(qemu-system-aarch64).
notes:
  - Needs C(qemu-system-aarch64) (package qemu-system-arm), e2fsprogs (debugfs, mkfs.ext4), mtools, fdisk,
    openssh-client, xz-utils and zstd; the test kernel needs mmdebstrap and network access once.
  - There is no arm64 KVM on an x86_64 host; under emulation (TCG) a Debian image shows its login prompt after
    about a minute.
  - C(playbooks/boot-test.yml) boots an image with this module and checks the contracts on the running system.
author:
  - pibake developers (@pibake)
"""

EXAMPLES = r"""
- name: Boot the image with a blank OURBOX_DATA disk, on a bigger disk
  pibake.image.qemu_boot:
    image: deploy/ourbox-mini-1.0-prod.img.xz
    grow: 1G
    data_disk: true
  register: vm

- name: Reach it over SSH
  ansible.builtin.add_host:
    name: booted
    ansible_host: "{{ vm.ssh_host }}"
    ansible_port: "{{ vm.ssh_port }}"
    ansible_user: "{{ vm.ssh_user }}"
    ansible_ssh_private_key_file: "{{ vm.ssh_private_key }}"

- name: Power it off, keeping the disks
  pibake.image.qemu_boot:
    state: stopped
    vm: "{{ vm.vm }}"

- name: Boot the same disks a second time
  pibake.image.qemu_boot:
    vm: "{{ vm.vm }}"

- name: Delete the test machine
  pibake.image.qemu_boot:
    state: absent
    vm: "{{ vm.vm }}"
"""

RETURN = r"""
vm:
  description: Record of the test machine; give it as O(vm) to stop, boot again or delete it.
  returned: state=started
  type: str
  sample: /run/pibake/vms/20260101T120000-0a1b2c3d.json
work_dir:
  description: The machine's temporary folder (deleted with the machine).
  returned: state=started
  type: str
ssh_host:
  description: Address to reach the guest's SSH server.
  returned: state=started
  type: str
  sample: 127.0.0.1
ssh_port:
  description: Host port forwarded to the guest's port 22.
  returned: state=started
  type: int
ssh_user:
  description: The user that has the injected key.
  returned: state=started
  type: str
ssh_private_key:
  description: Private key file of the injected key (inside RV(work_dir)).
  returned: state=started
  type: str
ssh_config:
  description: An ssh_config file for the guest (host alias RV(ssh_host_alias)).
  returned: state=started
  type: str
ssh_host_alias:
  description: Host name to use with RV(ssh_config).
  returned: state=started
  type: str
  sample: pibake-vm
console_log:
  description: Serial console log of the current boot.
  returned: state=started
  type: str
kernel_source:
  description: C(image) or C(debian-test-kernel).
  returned: state=started
  type: str
kernel:
  description: Which kernel booted, and why.
  returned: state=started
  type: str
cmdline:
  description: The kernel command line.
  returned: state=started
  type: str
boots:
  description: How many times this machine has been booted.
  returned: state=started
  type: int
timings:
  description: Seconds from starting qemu to the login prompt (C(login_prompt_s)) and to SSH (C(ssh_s)).
  returned: state=started
  type: dict
  sample: {"login_prompt_s": 41.3, "ssh_s": 44.0}
stop:
  description: How the guest stopped (C(seconds), C(forced)).
  returned: state=stopped
  type: dict
progress:
  description: What was done while preparing and booting (copy, kernel choice, key, login prompt, SSH).
  returned: state=started
  type: list
  elements: str
reaped:
  description: Ids of the test machines deleted.
  returned: state=reaped
  type: list
  elements: str
"""

import os
import traceback

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

try:
    from ansible_collections.pibake.image.plugins.module_utils import _qemu_boot
    IMPORT_ERROR = None
except ImportError:  # pragma: no cover - reported through fail_json
    IMPORT_ERROR = traceback.format_exc()


def main():
    module = AnsibleModule(
        argument_spec=dict(
            state=dict(type="str", choices=["started", "stopped", "absent", "reaped"], default="started"),
            image=dict(type="path"),
            vm=dict(type="path"),
            work_dir=dict(type="path"),
            owner_pid=dict(type="int", default=0),
            grow=dict(type="str", default="0"),
            data_disk=dict(type="bool"),
            data_disk_size=dict(type="str", default="256M"),
            data_disk_label=dict(type="str", default="OURBOX_DATA"),
            ssh_user=dict(type="str", default="auto"),
            ssh_public_key=dict(type="str"),
            simulate_wifi=dict(type="bool", default=False),
            kernel=dict(type="str", choices=["auto", "image", "debian"], default="auto"),
            kernel_release=dict(type="str", default="trixie"),
            append=dict(type="str", default=""),
            memory=dict(type="int", default=2048),
            smp=dict(type="int", default=2),
            cpu=dict(type="str", default="cortex-a72"),
            restrict_network=dict(type="bool", default=False),
            wait_for=dict(type="str", choices=["ssh", "login", "none"], default="ssh"),
            boot_timeout=dict(type="int", default=600),
            stop_timeout=dict(type="int", default=120),
            cache_dir=dict(type="path"),
        ),
        required_if=[("state", "stopped", ("vm",)), ("state", "absent", ("vm",))],
        supports_check_mode=True,
    )
    if IMPORT_ERROR:
        module.fail_json(msg="pibake.image module utilities failed to import.", exception=IMPORT_ERROR)
    p = module.params
    lines = []
    state = p["state"]
    try:
        if state == "reaped":
            if module.check_mode:
                module.exit_json(changed=False, reaped=[])
            reaped = _qemu_boot.reap_stale()
            module.exit_json(changed=bool(reaped), reaped=reaped)
        if state in ("stopped", "absent"):
            exists = os.path.exists(p["vm"])
            if module.check_mode or not exists:
                module.exit_json(changed=exists)
            vm = _qemu_boot.load(p["vm"], log=lines.append)
            if state == "absent":
                vm.destroy()
                module.exit_json(changed=True)
            stop = vm.shutdown(timeout=p["stop_timeout"])
            module.exit_json(changed=bool(stop.get("stopped")), stop=stop)
        if not p["vm"] and not p["image"]:
            module.fail_json(msg="Give image (the image to boot) or vm (a test machine to boot again).")
        if module.check_mode:
            module.exit_json(changed=True, msg="would boot " + (p["image"] or p["vm"]))
        if p["vm"]:
            vm = _qemu_boot.load(p["vm"], log=lines.append)
            if p["data_disk"] is not None:
                vm.attach_data_disk(p["data_disk"])
        else:
            vm = _qemu_boot.prepare(
                p["image"], work_root=p["work_dir"] or "", owner_pid=p["owner_pid"], grow=p["grow"],
                data_disk=bool(p["data_disk"]), data_disk_size=p["data_disk_size"], data_disk_label=p["data_disk_label"],
                ssh_user=p["ssh_user"], ssh_public_key=p["ssh_public_key"] or "", kernel=p["kernel"],
                kernel_release=p["kernel_release"], append=p["append"], memory=p["memory"], smp=p["smp"],
                cpu=p["cpu"], simulate_wifi=p["simulate_wifi"], restrict_network=p["restrict_network"],
                cache_dir=p["cache_dir"], log=lines.append,
            )
        wait = "none" if vm.spec.get("ssh_user") == "" and p["wait_for"] == "ssh" else p["wait_for"]
        try:
            timings = vm.boot(wait=wait, timeout=p["boot_timeout"])
        except PibakeError as err:
            info = vm.describe()
            if not p["vm"]:
                vm.destroy()
            module.fail_json(msg=str(err), progress=lines, **{k: v for k, v in info.items() if k != "running"})
        module.exit_json(changed=True, timings=timings, progress=lines, **vm.describe())
    except PibakeError as err:
        module.fail_json(msg=str(err), progress=lines)


if __name__ == "__main__":
    main()
