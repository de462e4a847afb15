# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Run the real pibake-firstboot program against a fake device: first boot, normal boot, power-cut resume.

The program runs natively on the host with PIBAKE_ROOT (a temp system tree), PIBAKE_STATE_DIR and PIBAKE_SYS_DIR
(a fake sysfs with a wlan0 MAC). ssh-keygen and systemd-machine-id-setup are the real tools; docker, systemctl and
the preload/network-mode commands are PATH shims that log their calls and simulate a swarm. A shim can SIGKILL the
program in the middle of a stack deploy, which is what a power cut looks like to the state on disk.

The QEMU boot test (issue 7) runs the same program for real on a booted image.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest
from tests.integration.firstboot_shims import DOCKER_SHIM, LOG_SHIM

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "roles", "firstboot", "files", "pibake-firstboot")
MAC = "dc:a6:32:a1:b2:c3"

pytestmark = pytest.mark.skipif(
    shutil.which("ssh-keygen") is None or shutil.which("systemd-machine-id-setup") is None,
    reason="needs ssh-keygen and systemd-machine-id-setup on the host",
)

def _write_exec(path, text):
    with open(path, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o755)


@pytest.fixture
def device(tmp_path):
    """A fake device: system tree, sysfs, state dir, config, shims. Returns a helper object."""
    return FakeDevice(tmp_path)


class FakeDevice:
    def __init__(self, base):
        self.base = base
        self.root = base / "root"
        self.state = base / "state"
        self.sys = base / "sys"
        self.shims = base / "shims"
        for path in (self.root / "etc" / "ssh", self.sys / "class" / "net" / "wlan0", self.shims, self.state,
                     self.root / "srv" / "stacks"):
            path.mkdir(parents=True)
        (self.root / "etc" / "machine-id").write_text("")
        (self.sys / "class" / "net" / "wlan0" / "address").write_text(MAC + "\n")
        (self.sys / "class" / "net" / "lo").mkdir()
        (self.sys / "class" / "net" / "lo" / "address").write_text("00:00:00:00:00:00\n")
        for name in ("pihole", "api"):
            (self.root / "srv" / "stacks" / f"{name}.yml").write_text("version: '3.8'\nservices: {}\n")
        _write_exec(self.shims / "docker", DOCKER_SHIM)
        for name in ("systemctl", "preload", "netmode"):
            _write_exec(self.shims / name, LOG_SHIM)
        self.preload = self.root / "usr" / "local" / "sbin" / "pibake-docker-preload"
        self.preload.parent.mkdir(parents=True)
        _write_exec(self.preload, LOG_SHIM)
        self.config = {
            "state_dir": "/var/lib/pibake",
            "ssh_host_key_types": ["ed25519", "ecdsa"],
            "grow_rootfs": {"enabled": False, "min_free_mib": 16},
            "secrets": {
                "dir": "secrets",
                "env_file": "secrets.env",
                "stack_env": True,
                "items": [
                    {"name": "jwt_secret", "bytes": 32, "encoding": "hex"},
                    {"name": "api_key", "bytes": 24, "encoding": "base64"},
                ],
            },
            "ap": {
                "enabled": True,
                "interfaces": ["wlan0"],
                "ssid_prefix": "CubeOS",
                "passphrase_mode": "random",
                "passphrase_length": 16,
                "passphrase_mac_prefix": "cubeos",
                "passphrase_mac_lowercase": False,
                "credentials_file": "ap-credentials",
                "unit": "hostapd.service",
            },
            "docker": {
                "enabled": True,
                "wait_timeout": 5,
                "preload_command": "/usr/local/sbin/pibake-docker-preload",
                "swarm_init": True,
                "swarm_advertise_addr": "",
                "stacks_manifest": "/etc/pibake/docker-stacks.json",
                "stacks": [
                    {"name": "pihole", "compose_file": "/srv/stacks/pihole.yml", "timeout": 3, "wait": True},
                    {"name": "api", "compose_file": "/srv/stacks/api.yml", "timeout": 3, "wait": True},
                ],
                "verify_timeout": 3,
                "stack_timeout": 3,
                "poll_interval": 0,
            },
            "network_mode_command": "/usr/local/sbin/pibake-network-mode apply",
        }
        netmode = self.root / "usr" / "local" / "sbin" / "pibake-network-mode"
        _write_exec(netmode, LOG_SHIM)

    def write_config(self):
        path = self.base / "firstboot.json"
        path.write_text(json.dumps(self.config, indent=2))
        return path

    def run(self, *args, extra_env=None):
        env = {
            "PATH": f"{self.shims}:/usr/sbin:/usr/bin:/sbin:/bin",
            "PIBAKE_FIRSTBOOT_CONFIG": str(self.write_config()),
            "PIBAKE_STATE_DIR": str(self.state),
            "PIBAKE_ROOT": str(self.root),
            "PIBAKE_SYS_DIR": str(self.sys),
            "SHIM_DIR": str(self.shims),
        }
        env.update(extra_env or {})
        return subprocess.run([sys.executable, SCRIPT, *args], env=env, capture_output=True, text=True,
                              timeout=120, check=False)

    def calls(self):
        log = self.shims / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def host_keys(self):
        ssh = self.root / "etc" / "ssh"
        return {p.name: p.read_bytes() for p in sorted(ssh.iterdir()) if p.name.startswith("ssh_host_")}

    def secrets(self):
        return {p.name: p.read_text() for p in sorted((self.state / "secrets").iterdir())}

    def ap(self):
        values = {}
        for line in (self.state / "ap-credentials").read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, _, value = line.partition("=")
                values[key] = value
        return values

    def steps_done(self):
        steps = self.state / "firstboot" / "steps"
        return sorted(p.name[:-5] for p in steps.iterdir()) if steps.exists() else []

    def status(self, phase="boot"):
        return json.loads((self.state / "firstboot" / f"last-{phase}.json").read_text())


def _calls_matching(calls, prefix):
    return [c for c in calls if c.startswith(prefix)]


def test_first_boot_sets_up_everything_in_order(device):
    proc = device.run("boot")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "first boot" in proc.stdout

    keys = device.host_keys()
    assert set(keys) == {"ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_ecdsa_key",
                         "ssh_host_ecdsa_key.pub"}
    machine_id = (device.root / "etc" / "machine-id").read_text().strip()
    assert len(machine_id) == 32 and int(machine_id, 16)

    secrets = device.secrets()
    assert set(secrets) == {"jwt_secret", "api_key"}
    assert len(secrets["jwt_secret"].strip()) == 64
    assert stat.S_IMODE(os.stat(device.state / "secrets").st_mode) == 0o700
    for name in secrets:
        assert stat.S_IMODE(os.stat(device.state / "secrets" / name).st_mode) == 0o600
    env_file = (device.state / "secrets.env").read_text()
    assert f"JWT_SECRET={secrets['jwt_secret'].strip()}" in env_file
    assert stat.S_IMODE(os.stat(device.state / "secrets.env").st_mode) == 0o600

    ap = device.ap()
    assert ap["SSID"] == "CubeOS-A1B2C3"
    assert len(ap["PASSPHRASE"]) == 16 and "a1b2c3" not in ap["PASSPHRASE"].lower()
    assert stat.S_IMODE(os.stat(device.state / "ap-credentials").st_mode) == 0o600

    calls = device.calls()
    order = [c for c in calls if c.startswith(("pibake-docker-preload", "docker swarm init", "docker stack deploy",
                                               "systemctl start"))]
    assert order[0] == "pibake-docker-preload "
    assert order[1] == "docker swarm init"
    assert order[2].startswith("docker stack deploy") and order[2].endswith(" pihole")
    assert "--resolve-image never" in order[2]
    assert order[3].endswith(" api")
    assert order[4] == "systemctl start hostapd.service"
    assert (device.state / "firstboot" / "done").exists()
    assert device.status()["ok"] is True
    assert "stack-api" in device.steps_done()


def test_second_boot_takes_the_normal_path_and_keeps_identity(device):
    assert device.run("boot").returncode == 0
    keys, secrets, ap = device.host_keys(), device.secrets(), device.ap()
    machine_id = (device.root / "etc" / "machine-id").read_text()
    first_calls = len(device.calls())

    proc = device.run("identity")
    assert proc.returncode == 0 and "normal boot" in proc.stdout
    proc = device.run("boot")
    assert proc.returncode == 0, proc.stdout
    assert "normal boot" in proc.stdout

    assert device.host_keys() == keys
    assert device.secrets() == secrets
    assert device.ap() == ap
    assert (device.root / "etc" / "machine-id").read_text() == machine_id
    calls = device.calls()[first_calls:]
    assert not _calls_matching(calls, "docker swarm init")
    assert not _calls_matching(calls, "docker stack deploy")
    assert not _calls_matching(calls, "pibake-docker-preload")
    assert _calls_matching(calls, "docker stack services pihole")
    assert _calls_matching(calls, "docker stack services api")
    assert "systemctl start hostapd.service" in calls
    assert "pibake-network-mode apply" in calls
    status = device.status()
    assert status["boot"] == "normal" and status["ok"] is True


def test_power_cut_during_first_boot_resumes_without_repeating(device):
    proc = device.run("boot", extra_env={"SHIM_KILL_DEPLOY": "api"})
    assert proc.returncode == -9  # killed like a power cut, in the middle of deploying the second stack
    done = device.steps_done()
    assert {"machine_id", "ssh_host_keys", "secrets", "ap_credentials", "preload_images", "swarm_init",
            "stack-pihole"} <= set(done)
    assert "stack-api" not in done
    assert not (device.state / "firstboot" / "done").exists()
    keys, secrets, ap = device.host_keys(), device.secrets(), device.ap()

    proc = device.run("boot")
    assert proc.returncode == 0, proc.stdout
    assert "first boot" in proc.stdout
    assert device.host_keys() == keys, "SSH host keys must not be regenerated on resume"
    assert device.secrets() == secrets
    assert device.ap() == ap
    calls = device.calls()
    assert len(_calls_matching(calls, "docker swarm init")) == 1
    assert len(_calls_matching(calls, "pibake-docker-preload")) == 1
    deploys = _calls_matching(calls, "docker stack deploy")
    assert sum(d.endswith(" pihole") for d in deploys) == 1, "a recorded stack must not be deployed again"
    assert sum(d.endswith(" api") for d in deploys) == 2, "the interrupted stack is deployed again"
    assert (device.state / "firstboot" / "done").exists()


def test_failed_step_is_reported_and_retried_on_next_boot(device):
    proc = device.run("boot", extra_env={"SHIM_UNHEALTHY": "pihole"})
    assert proc.returncode == 1
    assert "stack-pihole: FAILED" in proc.stdout
    assert "step stack-api: skipped" in proc.stdout
    assert "systemctl start hostapd.service" in device.calls(), "the AP still starts so the device is reachable"
    status = device.status()
    assert status["ok"] is False
    assert status["steps"]["stack-pihole"].startswith("failed")
    assert not (device.state / "firstboot" / "done").exists()

    proc = device.run("boot")
    assert proc.returncode == 0, proc.stdout
    assert (device.state / "firstboot" / "done").exists()


def test_two_devices_get_different_identities(tmp_path):
    first, second = FakeDevice(tmp_path / "a"), FakeDevice(tmp_path / "b")
    for dev in (first, second):
        assert dev.run("boot").returncode == 0
    assert first.host_keys()["ssh_host_ed25519_key"] != second.host_keys()["ssh_host_ed25519_key"]
    assert first.secrets()["jwt_secret"] != second.secrets()["jwt_secret"]
    assert first.ap()["PASSPHRASE"] != second.ap()["PASSPHRASE"]
    assert (first.root / "etc/machine-id").read_text() != (second.root / "etc/machine-id").read_text()


def test_mac_derived_passphrase_only_when_asked(device):
    device.config["ap"]["passphrase_mode"] = "mac"
    assert device.run("identity").returncode == 0
    assert device.ap() == {"SSID": "CubeOS-A1B2C3", "PASSPHRASE": "cubeos-A1B2C3"}


def test_missing_wlan0_falls_back_to_another_interface(device):
    shutil.rmtree(device.sys / "class" / "net" / "wlan0")
    (device.sys / "class" / "net" / "end0").mkdir()
    (device.sys / "class" / "net" / "end0" / "address").write_text("52:54:00:12:34:56\n")
    proc = device.run("identity")
    assert proc.returncode == 0
    assert device.ap()["SSID"] == "CubeOS-123456"
    assert "from end0" in (device.state / "ap-credentials").read_text()


def test_identity_phase_then_boot_phase(device):
    proc = device.run("identity")
    assert proc.returncode == 0, proc.stdout
    assert not _calls_matching(device.calls(), "docker")
    assert not (device.state / "firstboot" / "done").exists()
    keys = device.host_keys()
    proc = device.run("boot")
    assert proc.returncode == 0
    assert device.status()["steps"]["ssh_host_keys"] == "already done"
    assert device.host_keys() == keys


def test_docker_disabled_profile_needs_no_docker(device):
    device.config["docker"]["enabled"] = False
    device.config["ap"]["enabled"] = False
    device.config["secrets"]["items"] = []
    (device.shims / "docker").unlink()
    proc = device.run("boot")
    assert proc.returncode == 0, proc.stdout
    assert (device.state / "firstboot" / "done").exists()
    assert not (device.state / "ap-credentials").exists()


def test_rearm_and_adopt(device):
    assert device.run("boot").returncode == 0
    proc = device.run("rearm", "--check")
    assert "removed" in proc.stdout and (device.state / "firstboot" / "done").exists()
    proc = device.run("rearm")
    assert proc.returncode == 0 and "removed" in proc.stdout
    for name in ("firstboot", "secrets", "ap-credentials", "secrets.env"):
        assert not (device.state / name).exists()
    assert device.run("rearm").stdout == ""  # idempotent

    proc = device.run("adopt")
    assert "recorded ssh_host_keys" in proc.stdout and "recorded machine_id" in proc.stdout
    assert device.run("adopt").stdout == ""
    keys = device.host_keys()
    assert device.run("identity").returncode == 0
    assert device.host_keys() == keys, "adopted keys are kept"


def test_bad_config_exits_2(device, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    proc = device.run("boot", extra_env={"PIBAKE_FIRSTBOOT_CONFIG": str(bad)})
    assert proc.returncode == 2
    assert "cannot read" in proc.stdout


def test_journal_priority_prefixes(device):
    proc = device.run("identity", extra_env={"JOURNAL_STREAM": "8:1234"})
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0].startswith("<5>")
    assert textwrap.dedent(proc.stdout).count("<6>step ") >= 5


def test_stacks_from_the_docker_role_manifest_swarm_and_compose(device):
    manifest = device.root / "etc" / "pibake" / "docker-stacks.json"
    manifest.parent.mkdir(parents=True)
    for name in ("dns", "hal"):
        (device.root / "cubeos" / name).mkdir(parents=True)
        (device.root / "cubeos" / name / "docker-compose.yml").write_text("services: {}\n")
    (device.root / "cubeos" / "dns" / ".env").write_text("FROM_DOTENV=yes\n# comment\n")
    manifest.write_text(json.dumps([
        {"name": "dns", "file": "/cubeos/dns/docker-compose.yml", "deploy": "swarm"},
        {"name": "hal", "file": "/cubeos/hal/docker-compose.yml", "deploy": "compose"},
    ]))
    # an explicit entry named like a manifest stack only adjusts it; other explicit stacks follow the manifest
    device.config["docker"]["stacks"] = [{"name": "hal", "timeout": 7},
                                         {"name": "api", "compose_file": "/srv/stacks/api.yml"}]
    proc = device.run("boot")
    assert proc.returncode == 0, proc.stdout
    calls = device.calls()
    order = [c.split()[-1] if c.startswith("docker stack deploy") else c.split()[5]
             for c in calls if c.startswith(("docker stack deploy", "docker compose --file"))]
    assert order == ["dns", "hal", "api"]
    assert "dns env FROM_DOTENV=yes" in calls, "swarm does not read .env: the flow passes it"
    assert any(c.startswith("dns env JWT_SECRET=") for c in calls), "secrets are in the deploy environment"
    assert "stack-hal" in device.steps_done()

    first = len(calls)
    proc = device.run("boot")
    assert proc.returncode == 0 and "normal boot" in proc.stdout, proc.stdout
    later = device.calls()[first:]
    assert [c for c in later if c.startswith("docker compose --file")], "a compose project is brought up again"
    assert not [c for c in later if c.startswith("docker stack deploy")], "swarm stacks are only verified"


def test_unhealthy_compose_project_fails_its_step(device):
    manifest = device.root / "etc" / "pibake" / "docker-stacks.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps([{"name": "hal", "file": "/srv/stacks/api.yml", "deploy": "compose"}]))
    device.config["docker"]["stacks"] = []
    proc = device.run("boot", extra_env={"SHIM_UNHEALTHY": "hal"})
    assert proc.returncode == 1
    assert "compose project hal not healthy" in proc.stdout


def test_broken_manifest_is_a_visible_failure(device):
    manifest = device.root / "etc" / "pibake" / "docker-stacks.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("[not json")
    proc = device.run("boot")
    assert proc.returncode == 1
    assert "stack manifest /etc/pibake/docker-stacks.json is not JSON" in proc.stdout
    assert "systemctl start hostapd.service" in device.calls()


def test_access_point_waits_for_its_interface(device):
    shutil.rmtree(device.sys / "class" / "net" / "wlan0")
    proc = device.run("boot")
    assert proc.returncode == 0, proc.stdout
    assert not [c for c in device.calls() if c.startswith("systemctl start")]
    assert "no wlan0 (yet)" in proc.stdout


SFDISK_SHIM = """#!/bin/sh
echo "sfdisk $*" >> "$SHIM_DIR/calls.log"
case "$1" in
  --json) echo '{"partitiontable": {"label": "'"${SHIM_LABEL:-dos}"'", "device": "/dev/vda"}}' ;;
  --no-reread) cat > "$SHIM_DIR/sfdisk.stdin" ;;
esac
"""


def _fake_disk(device, disk_sectors, parts):
    """sysfs for /dev/vda with partitions {number: (start, size)}; the root filesystem is on partition 2."""
    disk = device.sys / "block" / "vda"
    disk.mkdir(parents=True)
    (disk / "size").write_text(f"{disk_sectors}\n")
    for number, (start, size) in parts.items():
        part = disk / f"vda{number}"
        part.mkdir()
        (part / "partition").write_text(f"{number}\n")
        (part / "start").write_text(f"{start}\n")
        (part / "size").write_text(f"{size}\n")
    (device.sys / "dev" / "block").mkdir(parents=True)
    (device.sys / "dev" / "block" / "254:2").symlink_to(disk / "vda2")
    _write_exec(device.shims / "sfdisk", SFDISK_SHIM)
    for name in ("partx", "resize2fs"):
        _write_exec(device.shims / name, LOG_SHIM)
    device.config["grow_rootfs"]["enabled"] = True


def _grow_calls(device):
    return [c for c in device.calls() if c.split()[0] in ("sfdisk", "partx", "resize2fs")]


def test_grow_rootfs_into_free_space(device):
    _fake_disk(device, 8388608, {1: (8192, 524288), 2: (532480, 2097152)})
    proc = device.run("identity", extra_env={"PIBAKE_ROOT_DEV": "254:2"})
    assert proc.returncode == 0, proc.stdout
    assert _grow_calls(device) == [
        "sfdisk --json /dev/vda",
        "sfdisk --no-reread --no-tell-kernel -N 2 /dev/vda",
        "partx -u --nr 2 /dev/vda",
        "resize2fs /dev/vda2",
    ]
    assert (device.shims / "sfdisk.stdin").read_text() == ", +\n"
    assert "grown by 2812 MiB" in proc.stdout


def test_grow_rootfs_relocates_the_gpt_backup_header(device):
    _fake_disk(device, 8388608, {1: (8192, 524288), 2: (532480, 2097152)})
    device.run("identity", extra_env={"PIBAKE_ROOT_DEV": "254:2", "SHIM_LABEL": "gpt"})
    assert "sfdisk --relocate gpt-bkp-header /dev/vda" in _grow_calls(device)


def test_grow_rootfs_full_disk_only_resizes_the_filesystem(device):
    _fake_disk(device, 532480 + 2097152 + 100, {1: (8192, 524288), 2: (532480, 2097152)})
    assert device.run("identity", extra_env={"PIBAKE_ROOT_DEV": "254:2"}).returncode == 0
    assert _grow_calls(device) == ["resize2fs /dev/vda2"]


def test_grow_rootfs_never_moves_a_later_partition(device):
    _fake_disk(device, 8388608, {1: (8192, 524288), 2: (532480, 2097152), 3: (2629632, 1000000)})
    proc = device.run("identity", extra_env={"PIBAKE_ROOT_DEV": "254:2"})
    assert proc.returncode == 0
    assert _grow_calls(device) == []
    assert "not the last partition" in proc.stdout


def test_grow_rootfs_disabled_when_the_base_grows_itself(device):
    _fake_disk(device, 8388608, {1: (8192, 524288), 2: (532480, 2097152)})
    device.config["grow_rootfs"]["enabled"] = False
    assert device.run("identity", extra_env={"PIBAKE_ROOT_DEV": "254:2"}).returncode == 0
    assert _grow_calls(device) == []
