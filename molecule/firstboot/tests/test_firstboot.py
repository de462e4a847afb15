# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Molecule verify for pibake.image.firstboot: what is installed, and the program run for real in the chroot.

The program runs inside the instance's chroot with its real configuration (/etc/pibake/firstboot.json from the
role), the image's own python3 and ssh-keygen; only the state dir (PIBAKE_STATE_DIR), sysfs (PIBAKE_SYS_DIR) and
docker/systemctl (PATH shims) are stand-ins. The tests run in file order: installed state first, then boots.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from firstboot_shims import DOCKER_SHIM, LOG_SHIM  # noqa: E402

PROGRAM = "/usr/local/sbin/pibake-firstboot"
UNITS = ("pibake-firstboot-identity.service", "pibake-firstboot.service")


def _config(host):
    return json.loads(host.file("/etc/pibake/firstboot.json").content_string)


def test_program_installed(host):
    f = host.file(PROGRAM)
    assert f.is_file and f.mode == 0o755 and f.user == "root"
    assert host.run(f"{PROGRAM} status").rc == 0


def test_configuration_from_variables(host):
    cfg = _config(host)
    assert cfg["grow_rootfs"]["enabled"] is False, "the base's own growth unit is enabled, so firstboot must not grow"
    assert cfg["secrets"]["dir"] == "secrets" and cfg["ap"]["credentials_file"] == "ap-credentials"
    assert [s["name"] for s in cfg["secrets"]["items"]] == ["jwt_secret", "api_key"]
    assert cfg["ap"] == {**cfg["ap"], "enabled": True, "ssid_prefix": "CubeOS", "passphrase_mode": "random"}
    assert cfg["docker"]["stacks_manifest"] == "/etc/pibake/docker-stacks.json"
    assert [s["name"] for s in cfg["docker"]["stacks"]] == ["pihole", "api"]
    assert cfg["docker"]["stacks"][1]["timeout"] == 120 and cfg["docker"]["stack_timeout"] == 600
    assert host.file("/etc/pibake/firstboot.json").mode == 0o644


def test_units_installed_and_enabled(host):
    identity = host.file(f"/etc/systemd/system/{UNITS[0]}").content_string
    boot = host.file(f"/etc/systemd/system/{UNITS[1]}").content_string
    assert f"ExecStart={PROGRAM} identity" in identity
    assert "Before=ssh.service" in identity and "pibake-expand-rootfs.service" in identity
    assert "pibake-ap.service" in identity.split("Before=", 1)[1].splitlines()[0]
    assert "ConditionPathExists=!/var/lib/pibake/firstboot/done" in identity
    assert f"ExecStart={PROGRAM} boot" in boot and "Type=oneshot" in boot
    assert "DefaultDependencies=no" in boot
    assert "After=sysinit.target basic.target network-online.target docker.service" in boot
    for unit in UNITS:
        link = host.file(f"/etc/systemd/system/multi-user.target.wants/{unit}")
        assert link.is_symlink and link.linked_to == f"/etc/systemd/system/{unit}"
        assert host.run("systemctl is-enabled %s", unit).stdout.strip() == "enabled"


def test_units_pass_systemd_analyze(host):
    result = host.run("systemd-analyze verify %s %s", *(f"/etc/systemd/system/{u}" for u in UNITS))
    assert result.rc == 0, result.stdout + result.stderr
    assert "pibake-firstboot" not in result.stdout + result.stderr
    for unit in UNITS:
        assert host.file(f"/etc/systemd/system/{unit}").content_string.endswith("WantedBy=multi-user.target\n")


def test_stale_per_device_state_was_removed(host):
    for path in ("/var/lib/pibake/firstboot", "/var/lib/pibake/secrets", "/var/lib/pibake/ap-credentials"):
        assert not host.file(path).exists, f"{path} survived: the device would skip its first boot"


class Device:
    """The chroot as a device: shims, fake sysfs, fake state dir and compose files, all inside the root."""

    def __init__(self, host):
        self.host = host
        self.root = host.backend.name
        self.shims = "/tmp/fb-shims"
        for path, text in ((f"{self.shims}/docker", DOCKER_SHIM), (f"{self.shims}/systemctl", LOG_SHIM),
                           ("/usr/local/sbin/pibake-docker-preload", LOG_SHIM),
                           ("/usr/local/sbin/pibake-network-mode", LOG_SHIM)):
            self.write(path, text, 0o755)
        self.write("/tmp/fb-sys/class/net/wlan0/address", "dc:a6:32:0a:0b:0c\n")
        for stack in ("pihole", "api"):
            self.write(f"/cubeos/coreapps/{stack}/docker-compose.yml", "services: {}\n")
        host.run("rm -rf /tmp/fb-state %s/calls.log %s/deployed %s/swarm", self.shims, self.shims, self.shims)

    def write(self, path, text, mode=0o644):
        full = os.path.join(self.root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as handle:
            handle.write(text)
        os.chmod(full, mode)

    def boot(self, phase="boot", **env):
        settings = {"PATH": f"{self.shims}:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "PIBAKE_STATE_DIR": "/tmp/fb-state", "PIBAKE_SYS_DIR": "/tmp/fb-sys", "SHIM_DIR": self.shims}
        settings.update(env)
        assignments = " ".join(f"{k}={v}" for k, v in settings.items())
        return self.host.run(f"env {assignments} {PROGRAM} {phase}")

    def read(self, path):
        full = os.path.join(self.root, path.lstrip("/"))
        with open(full, "rb") as handle:
            return handle.read()

    def calls(self):
        return self.host.file(f"{self.shims}/calls.log").content_string.splitlines()


@pytest.fixture(scope="module")
def device(host):
    return Device(host)


def test_first_boot_in_the_chroot(host, device):
    result = device.boot()
    assert result.rc == 0, result.stdout + result.stderr
    assert "first boot complete" in result.stdout
    assert host.file("/etc/ssh/ssh_host_ed25519_key").mode == 0o600
    assert host.file("/etc/ssh/ssh_host_rsa_key.pub").exists
    assert len(host.file("/etc/machine-id").content_string.strip()) == 32
    for name in ("jwt_secret", "api_key"):
        assert host.file(f"/tmp/fb-state/secrets/{name}").mode == 0o600
    creds = host.file("/tmp/fb-state/ap-credentials").content_string
    assert "SSID=CubeOS-0A0B0C" in creds.splitlines()
    deploys = [c for c in device.calls() if c.startswith("docker stack deploy")]
    assert [d.split()[-1] for d in deploys] == ["pihole", "api"]
    assert "systemctl start pibake-ap.service" in device.calls()


def test_second_boot_in_the_chroot_is_a_normal_boot(host, device):
    key = device.read("/etc/ssh/ssh_host_ed25519_key")
    result = device.boot()
    assert result.rc == 0 and "normal boot" in result.stdout, result.stdout
    assert device.read("/etc/ssh/ssh_host_ed25519_key") == key
    assert "pibake-network-mode apply" in device.calls()
    assert len([c for c in device.calls() if c.startswith("docker stack deploy")]) == 2


def test_power_cut_resume_in_the_chroot(host, device):
    host.run("rm -rf /tmp/fb-state %s/calls.log %s/deployed %s/swarm", device.shims, device.shims, device.shims)
    result = device.boot(SHIM_KILL_DEPLOY="api")
    assert result.rc in (137, -9), result.stdout  # the shell reports the SIGKILL as 128+9
    key = device.read("/etc/ssh/ssh_host_ed25519_key")
    assert not host.file("/tmp/fb-state/firstboot/done").exists
    result = device.boot()
    assert result.rc == 0, result.stdout
    assert device.read("/etc/ssh/ssh_host_ed25519_key") == key
    deploys = [c.split()[-1] for c in device.calls() if c.startswith("docker stack deploy")]
    assert deploys == ["pihole", "api", "api"]
    assert host.file("/tmp/fb-state/firstboot/done").exists
