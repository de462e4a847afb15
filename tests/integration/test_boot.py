# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Boot the built images in QEMU (software emulation) and check the contracts on the running systems.

Boots, each one on a sparse copy of a shared session build (tests/output/e2e/<profile>/deploy), never the build:

1. ourbox-mini copy A, first boot without the DATA drive, on a disk 512 MiB bigger than the image;
2. ourbox-mini copy A again with the blank OURBOX_DATA drive attached: the normal-boot path;
3. cubeos copy A through ``playbooks/boot-test.yml`` (its own checks), then testinfra, then (marker ``device``,
   ``make device``, not in ``make test``) ``playbooks/configure-device.yml`` over SSH twice;
4. cubeos copy B, only until SSH answers (its identity is made before sshd starts), to prove that two copies of
   the same image get different host keys, machine IDs and secrets.

Plus the plumbing on the tiny busybox image with the Debian test kernel: boot, disk order, and a kill -9 of the
boot-test playbook mid-boot leaving no qemu and no files. Boot figures go to tests/output/boot/boot-times.log.
"""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import time

import pytest
import yaml

from ansible_collections.pibake.image.plugins.module_utils import _qemu_boot
from ansible_collections.pibake.image.plugins.module_utils._release_info import parse as parse_release
from tests.support import boot, cubeos_images, e2e

pytestmark = pytest.mark.boot

DATA_MOUNT = "/var/lib/ourbox"


class _FiguresReport:
    """Prints the boot figures in pytest's terminal summary."""

    @staticmethod
    def pytest_terminal_summary(terminalreporter):
        if boot.FIGURES.lines:
            terminalreporter.write_sep("-", f"boot figures (appended to {os.path.relpath(boot.FIGURES_LOG, e2e.REPO)})")
            for line in boot.FIGURES.lines:
                terminalreporter.write_line(line)


@pytest.fixture(scope="module", autouse=True)
def _print_boot_figures(request):
    if not request.config.pluginmanager.has_plugin("pibake-boot-figures"):
        request.config.pluginmanager.register(_FiguresReport(), "pibake-boot-figures")
    yield


def _settle(host, timeout: int = 1500) -> str:
    """Wait until systemd finished starting everything (the boot flow included); returns the system state."""
    return host.run(f"timeout {timeout} systemctl is-system-running --wait").stdout.strip()


def _failed_units(host):
    out = host.check_output("systemctl list-units --state=failed --plain --no-legend --no-pager")
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _identity(host):
    keys = {}
    for pub in host.check_output("ls /etc/ssh/ssh_host_*_key.pub").split():
        keys[os.path.basename(pub)] = host.check_output(f"ssh-keygen -lf {pub}").split()[1]
    return {"machine_id": host.file("/etc/machine-id").content_string.strip(), "host_keys": keys}


def _secrets(host):
    config = json.loads(host.file("/etc/pibake/firstboot.json").content_string)
    folder = config["secrets"]["dir"]
    folder = folder if folder.startswith("/") else os.path.join(config["state_dir"], folder)
    found = {}
    for item in config["secrets"]["items"]:
        secret = host.file(os.path.join(folder, item["name"]))
        found[item["name"]] = {"exists": secret.exists, "mode": secret.mode if secret.exists else None,
                               "user": secret.user if secret.exists else None,
                               "value": secret.content_string.strip() if secret.exists else ""}
    return found


def _last_boot(host):
    return json.loads(host.file("/var/lib/pibake/firstboot/last-boot.json").content_string)


# ------------------------------------------------------------------ plumbing: the tiny image, the kill test


@pytest.fixture(scope="module")
def mini_boot_image(tmp_path_factory):
    return boot.mini_boot_image(str(tmp_path_factory.mktemp("mini") / "mini.img"))


def test_an_image_without_a_generic_kernel_boots_with_the_debian_test_kernel(mini_boot_image):
    vm = boot.machine(mini_boot_image, ssh_user="none", data_disk=True)
    try:
        assert vm.spec["kernel_source"] == "debian-test-kernel"
        figures = vm.boot(wait="login", timeout=240)
        text = vm.console_text()
        assert "pibake-initramfs: root PARTUUID=5eed0001-02 is /dev/vda2" in text, vm.console_tail()
        assert re.search(r"\bvdb\b", text), "the data disk is not the second virtio disk"
        boot.FIGURES.add("mini image with the Debian test kernel", login_prompt_s=figures["login_prompt_s"])
        stop = vm.shutdown(timeout=3)  # busybox init ignores the power button: the guard ends qemu
        assert stop["stopped"] and stop["forced"] and not vm.status["running"]
    finally:
        vm.destroy()
    assert not os.path.exists(vm.work) and not os.path.exists(vm.record_path)


def test_killing_the_boot_test_mid_boot_leaves_no_qemu_and_no_files(mini_boot_image, tmp_path):
    work, vms = tmp_path / "work", tmp_path / "vms"
    work.mkdir()
    env = dict(os.environ, PIBAKE_VM_DIR=str(vms))
    log = open(tmp_path / "playbook.log", "wb")  # pylint: disable=consider-using-with
    proc = subprocess.Popen(
        [os.path.join(e2e.REPO, ".venv", "bin", "ansible-playbook"), "playbooks/boot-test.yml",
         "-e", f"image={mini_boot_image}", "-e", f"boot_test_work_dir={work}", "-e", "boot_test_timeout=300"],
        cwd=e2e.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        booting = False
        while time.monotonic() < deadline and proc.poll() is None:
            logs = glob.glob(str(work / "pibake-boot-*" / "console-*.log"))
            if logs and "Linux version" in open(logs[0], errors="replace").read():
                booting = True
                break
            time.sleep(0.2)
        assert booting, "the kernel never started"
        assert boot.processes_using(str(work)), "no qemu was running"
        proc.send_signal(signal.SIGKILL)  # no always: block, no handler: only the guard is left to clean up
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    output = (tmp_path / "playbook.log").read_text(errors="replace")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and (boot.processes_using(str(work)) or os.listdir(work) or
                                           (vms.exists() and os.listdir(vms))):
        time.sleep(0.2)
    assert boot.processes_using(str(work)) == [], output[-2000:]
    assert os.listdir(work) == []
    assert not vms.exists() or os.listdir(vms) == []


# ------------------------------------------------------------------ ourbox-mini: two boots of one copy


@pytest.fixture(scope="module")
def ourbox(ourbox_build):
    assert ourbox_build.returncode == 0 and ourbox_build.image, ourbox_build.stdout[-4000:]
    vm = boot.machine(ourbox_build.image, grow="512M", data_disk=True, simulate_wifi=True)
    state = {"vm": vm, "build": ourbox_build}
    try:
        vm.attach_data_disk(False)  # the first boot finds no DATA drive
        figures = vm.boot(timeout=boot.BOOT_TIMEOUT)
        host = boot.testinfra_host(vm)
        state.update(host=host, state=_settle(host))
        boot.FIGURES.add("ourbox-mini first boot (no DATA drive)", login_prompt_s=figures["login_prompt_s"],
                         ssh_s=figures["ssh_s"], settled_s=vm.seconds(),
                         multi_user_after_kernel_s=boot.unit_seconds(host, "multi-user.target"),
                         firstboot_done_after_kernel_s=boot.unit_seconds(
                             host, "pibake-firstboot.service", "ExecMainExitTimestampMonotonic"))
        yield state
    finally:
        vm.destroy()


def test_ourbox_first_boot_reaches_multi_user_without_failed_units(ourbox):
    host = ourbox["host"]
    assert ourbox["state"] == "running", f"{ourbox['state']}: failed units {_failed_units(host)}"
    assert host.service("multi-user.target").is_running
    assert _failed_units(host) == []


def test_ourbox_network_manager_brings_up_the_wired_network(ourbox):
    host = ourbox["host"]
    assert host.service("NetworkManager").is_running
    route = host.check_output("ip -4 route show default")
    assert route.startswith("default via "), f"no default route from DHCP: {route!r}"


def test_ourbox_first_boot_ran_and_made_an_identity(ourbox):
    host = ourbox["host"]
    assert host.file("/var/lib/pibake/firstboot/done").exists
    last = _last_boot(host)
    assert last["boot"] == "first" and last["ok"], last
    identity = _identity(host)
    assert re.fullmatch(r"[0-9a-f]{32}", identity["machine_id"])
    assert {"ssh_host_ed25519_key.pub", "ssh_host_rsa_key.pub", "ssh_host_ecdsa_key.pub"} <= set(identity["host_keys"])
    for key in host.check_output("ls /etc/ssh/ssh_host_*_key").split():
        assert host.file(key).mode == 0o600 and host.file(key).user == "root"
    ourbox["identity"] = identity


def test_ourbox_release_file_matches_os_info(ourbox):
    release = parse_release(ourbox["host"].file("/etc/ourbox/release").content_string)
    os_info = ourbox["build"].os_info
    assert release, "empty /etc/ourbox/release"
    for key, value in release.items():
        assert key.startswith("OURBOX_"), key
        assert os_info.get(key[len("OURBOX_"):]) == value, (key, value, os_info)
    for name in ("SKU", "VARIANT", "VERSION", "BUILD_TIME", "GIT_REVISION", "BASE_IMAGE", "BASE_IMAGE_SHA256",
                 "PIBAKE_VERSION"):
        assert f"OURBOX_{name}" in release


def test_ourbox_boots_without_its_data_drive_and_guards_the_mountpoint(ourbox):
    host = ourbox["host"]
    fstab = host.file("/etc/fstab").content_string
    assert re.search(rf"^LABEL=OURBOX_DATA\s+{DATA_MOUNT}\s+ext4\s+\S*nofail", fstab, re.M), fstab
    assert not host.mount_point(DATA_MOUNT).exists
    assert ourbox["state"] == "running"  # the boot completed: nofail, no wait for the missing drive
    probe = host.run(f"touch {DATA_MOUNT}/written-without-the-drive")
    assert probe.rc != 0, "root could write into the bare mountpoint"
    assert host.run(f"ls -A {DATA_MOUNT}").stdout.strip() == ""


def test_ourbox_root_filesystem_fills_the_bigger_disk(ourbox):
    host = ourbox["host"]
    disk = int(host.check_output("cat /sys/class/block/vda/size")) * 512
    start = int(host.check_output("cat /sys/class/block/vda2/start")) * 512
    size = int(host.check_output("cat /sys/class/block/vda2/size")) * 512
    fs_bytes = int(host.check_output("stat -f -c '%b %S' / | awk '{print $1 * $2}'"))
    assert disk - (start + size) < (16 << 20), "the root partition was not grown to the end of the disk"
    assert fs_bytes > size * 0.95, "the root filesystem was not grown with its partition"
    assert disk >= ourbox["vm"].spec["image_bytes"] + (512 << 20)


def test_ourbox_second_boot_takes_the_normal_path_and_mounts_the_data_drive(ourbox):
    vm, before = ourbox["vm"], ourbox.get("identity") or _identity(ourbox["host"])
    stop = vm.shutdown(timeout=120)
    assert stop["stopped"] and not stop["forced"], stop
    vm.attach_data_disk(True)
    figures = vm.boot(timeout=boot.BOOT_TIMEOUT)
    host = boot.testinfra_host(vm)
    state = _settle(host)
    boot.FIGURES.add("ourbox-mini second boot (DATA drive)", poweroff_s=stop["seconds"],
                     login_prompt_s=figures["login_prompt_s"], ssh_s=figures["ssh_s"], settled_s=vm.seconds(),
                     multi_user_after_kernel_s=boot.unit_seconds(host, "multi-user.target"))
    assert state == "running", _failed_units(host)
    last = _last_boot(host)
    assert last["boot"] == "normal" and last["ok"], last
    assert _identity(host) == before, "the second boot made a new identity"
    mount = host.mount_point(DATA_MOUNT)
    assert mount.exists and mount.filesystem == "ext4"
    assert host.check_output(f"findmnt -n -o LABEL --mountpoint {DATA_MOUNT}") == "OURBOX_DATA"
    assert host.run(f"touch {DATA_MOUNT}/written && rm {DATA_MOUNT}/written").rc == 0


# ------------------------------------------------------------------ cubeos: the playbook, testinfra, device mode


@pytest.fixture(scope="module")
def cubeos(cubeos_build, cubeos_test_images, tmp_path_factory):
    assert cubeos_build.returncode == 0 and cubeos_build.image, cubeos_build.stdout[-4000:]
    folder = tmp_path_factory.mktemp("cubeos-boot")
    result_file = folder / "result.json"
    os.makedirs(boot.WORK_ROOT, exist_ok=True)
    started = time.monotonic()
    run = boot.run_playbook("playbooks/boot-test.yml", "-e", f"image={cubeos_build.image}",
                            "-e", f"boot_test_work_dir={boot.WORK_ROOT}", "-e", "boot_test_keep=true",
                            "-e", f"boot_test_owner_pid={os.getpid()}", "-e", f"boot_test_result={result_file}",
                            "-e", "boot_test_data_disk=false", timeout=3000)
    with open(os.path.join(boot.OUTPUT, "cubeos-boot-test.log"), "w", encoding="utf-8") as handle:
        handle.write(run.stdout)
    result = json.loads(result_file.read_text()) if result_file.exists() else {}
    vm = _qemu_boot.load(result["vm"]) if result.get("vm") else None
    try:
        state = {"run": run, "result": result, "vm": vm, "seconds": round(time.monotonic() - started, 1),
                 "build": cubeos_build, "images": cubeos_test_images, "folder": folder}
        if vm is not None:
            state["host"] = boot.testinfra_host(vm)
            facts = result.get("facts") or {}
            boot.FIGURES.add("cubeos first boot (boot-test.yml)", login_prompt_s=result["timings"]["login_prompt_s"],
                             ssh_s=result["timings"]["ssh_s"],
                             firstboot_done_after_kernel_s=(facts.get("firstboot") or {}).get(
                                 "done_after_kernel_start_s"),
                             playbook_s=state["seconds"])
        yield state
    finally:
        if vm is not None:
            vm.destroy()


def test_cubeos_boot_test_playbook_passes(cubeos):
    run, result = cubeos["run"], cubeos["result"]
    assert run.returncode == 0 and not result.get("failure"), run.stdout[-5000:]


def test_cubeos_first_boot_has_no_failed_units(cubeos):
    host = cubeos["host"]
    assert _settle(host) == "running", _failed_units(host)
    last = _last_boot(host)
    assert last["boot"] == "first" and last["ok"], last


def test_cubeos_preloaded_images_are_the_pinned_ones(cubeos):
    host = cubeos["host"]
    listed = host.check_output("docker image ls --format '{{.Repository}}:{{.Tag}} {{.ID}}'")
    for key, image in cubeos["images"]["images"].items():
        image_id = host.check_output(f"docker image inspect --format '{{{{.Id}}}}' {image['name']}")
        assert image_id == image["image_id"], f"{key}: {image['name']} is {image_id}, pinned {image['digest']}"
        assert f"{image['name']} {image['image_id'].split(':')[1][:12]}" in listed
        records = host.check_output("cat /var/lib/pibake/preload/loaded/*.done")
        assert f"ref={image['ref']}" in records, f"{key} was not loaded from its pinned reference"


def test_cubeos_swarm_is_active_and_the_listed_stacks_run(cubeos):
    host = cubeos["host"]
    assert host.check_output("docker info --format '{{.Swarm.LocalNodeState}}'") == "active"
    listed = [s["name"] for s in json.loads(host.file("/etc/pibake/docker-stacks.json").content_string)]
    assert listed, "the profile lists no stacks"
    stacks = host.check_output("docker stack ls --format '{{.Name}}'").split()
    assert set(listed) <= set(stacks), (listed, stacks)
    for name in listed:
        services = host.check_output(f"docker stack services {name} --format '{{{{.Name}}}} {{{{.Replicas}}}}'")
        assert services, f"stack {name} has no services"
        for line in services.splitlines():
            running, wanted = re.search(r"(\d+)/(\d+)", line).groups()
            assert running == wanted != "0", f"stack {name}: {line}"


def test_cubeos_secrets_are_private(cubeos):
    secrets = _secrets(cubeos["host"])
    assert secrets, "the profile defines no secrets"
    for name, secret in secrets.items():
        assert secret["exists"] and secret["mode"] == 0o600 and secret["user"] == "root", (name, secret["mode"])
        assert len(secret["value"]) >= 12, name
    cubeos["secrets"] = secrets


def test_cubeos_access_point_runs_on_the_simulated_radio(cubeos):
    host = cubeos["host"]
    creds = host.file("/var/lib/pibake/ap-credentials").content_string
    assert re.search(r"^SSID=CubeOS-[0-9A-F]{6}$", creds, re.M), creds
    assert host.service("hostapd").is_running


def test_two_copies_of_one_image_get_different_identities(cubeos):
    first = cubeos["host"]
    vm = boot.machine(cubeos["build"].image, simulate_wifi=True)
    try:
        figures = vm.boot(timeout=boot.BOOT_TIMEOUT)  # SSH answers only after the identity step (Before=ssh)
        second = boot.testinfra_host(vm)
        boot.FIGURES.add("cubeos second copy (to SSH)", login_prompt_s=figures["login_prompt_s"],
                         ssh_s=figures["ssh_s"])
        assert second.service("pibake-firstboot-identity.service").is_running  # active (exited)
        one, two = _identity(first), _identity(second)
        assert one["machine_id"] != two["machine_id"]
        assert set(one["host_keys"]) == set(two["host_keys"])
        for name in one["host_keys"]:
            assert one["host_keys"][name] != two["host_keys"][name], name
        secrets_one, secrets_two = _secrets(first), _secrets(second)
        for name in secrets_one:
            assert secrets_two[name]["exists"] and secrets_two[name]["mode"] == 0o600
            assert secrets_one[name]["value"] != secrets_two[name]["value"], name
    finally:
        vm.destroy()


def _device_inventory(cubeos) -> str:
    vm = cubeos["vm"]
    path = cubeos["folder"] / "devices.yml"
    with open(f"{vm.spec['ssh_key']}.pub", encoding="utf-8") as handle:
        admin_key = handle.read().strip()
    path.write_text(yaml.safe_dump({"devices": {"hosts": {"cube-vm": {
        "ansible_host": "127.0.0.1", "ansible_port": vm.spec["ssh_port"], "ansible_user": vm.spec["ssh_user"],
        "ansible_ssh_private_key_file": vm.spec["ssh_key"],
        "ansible_ssh_common_args": f"-F {vm.ssh_config}",
        "ansible_python_interpreter": "/usr/bin/python3",
        # the device's admin keys, as an operator gives them: the base role writes exactly these
        # (base_admin_authorized_keys_exclusive), so without them it would lock the admin out
        "pibake_admin_authorized_keys": [admin_key]}}}}))
    return str(path)


def _build_vars(cubeos) -> str:
    """The build's variables file (pinned preload images); made again when a reused build's copy is gone."""
    vars_file = cubeos["images"]["vars_file"]
    if os.path.isfile(vars_file):
        return vars_file
    return cubeos_images.write_vars_file(cubeos["images"]["images"], str(cubeos["folder"] / "build-vars.json"))


def _recap_changed(output: str) -> int:
    match = re.search(r"cube-vm\s*:\s*ok=\d+\s+changed=(\d+)", output)
    assert match, output[-3000:]
    return int(match.group(1))


@pytest.mark.device
def test_configure_device_applies_a_changed_sysctl_without_a_reboot(cubeos):
    host = cubeos["host"]
    boot_id = host.file("/proc/sys/kernel/random/boot_id").content_string
    with open(os.path.join(e2e.REPO, "inventories", "cubeos", "group_vars", "all", "roles.yml"),
              encoding="utf-8") as handle:
        sysctl = dict(yaml.safe_load(handle)["base_sysctl"])
    assert host.sysctl("vm.swappiness") == sysctl["vm.swappiness"]
    sysctl["vm.swappiness"] = 33
    extra = cubeos["folder"] / "device-vars.json"
    extra.write_text(json.dumps({"base_sysctl": sysctl}))
    cubeos["device_args"] = ["-i", "inventories/cubeos", "-i", _device_inventory(cubeos),
                             "-e", f"@{_build_vars(cubeos)}", "-e", f"@{extra}"]
    started = time.monotonic()
    run = boot.run_playbook("playbooks/configure-device.yml", *cubeos["device_args"], timeout=2400)
    with open(os.path.join(boot.OUTPUT, "configure-device-1.log"), "w", encoding="utf-8") as handle:
        handle.write(run.stdout)
    boot.FIGURES.add("configure-device.yml first run", seconds=round(time.monotonic() - started, 1))
    assert run.returncode == 0, run.stdout[-5000:]
    assert _recap_changed(run.stdout) > 0
    assert host.sysctl("vm.swappiness") == 33, "the handler did not apply the sysctl change"
    assert host.file("/proc/sys/kernel/random/boot_id").content_string == boot_id, "the device rebooted"


@pytest.mark.device
def test_configure_device_second_run_changes_nothing(cubeos):
    if "device_args" not in cubeos:
        pytest.skip("needs the first configure-device run")
    started = time.monotonic()
    run = boot.run_playbook("playbooks/configure-device.yml", *cubeos["device_args"], timeout=2400)
    with open(os.path.join(boot.OUTPUT, "configure-device-2.log"), "w", encoding="utf-8") as handle:
        handle.write(run.stdout)
    boot.FIGURES.add("configure-device.yml second run", seconds=round(time.monotonic() - started, 1))
    assert run.returncode == 0, run.stdout[-5000:]
    changed = [line for line in run.stdout.splitlines() if line.startswith("changed:")]
    assert _recap_changed(run.stdout) == 0, changed
