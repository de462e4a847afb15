# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The OurBox host contracts, checked on a re-attached image (testinfra chroot backend) or a live device (SSH).

The contracts are stated in docs/reference/contracts.md; each test names the clause it checks. Run it with
the options in tests/contracts/conftest.py. Tests of ``TestSealedImage`` apply to a built image only (no
identity yet), tests of ``TestBootedDevice`` to a device that has booted at least once.
"""

from __future__ import annotations

import os
import re
import shlex

import pytest

# tests/conftest.py puts the checkout's collection on sys.path.
from ansible_collections.pibake.image.plugins.module_utils import _mountpoint_guard as mg
from ansible_collections.pibake.image.plugins.module_utils._release_info import (
    OURBOX_REQUIRED_KEYS,
    parse,
    strip_prefix,
)

RELEASE = "/etc/ourbox/release"
FSTAB_OPTION_TIMEOUT = re.compile(r"^x-systemd\.device-timeout=(\d+)s?$")


def _release(host):
    f = host.file(RELEASE)
    assert f.exists, f"{RELEASE} is missing"
    return f, parse(f.content_string)


# --- Contract 1: release metadata ------------------------------------------------------------------------
def test_release_file_is_root_owned_and_world_readable(host):
    f, _ = _release(host)
    assert f.is_file and f.user == "root" and f.group == "root"
    assert f.mode == 0o644


def test_release_file_has_every_required_key(host, contract):
    _, values = _release(host)
    for name in OURBOX_REQUIRED_KEYS:
        key = contract["prefix"] + name.upper()
        assert values.get(key), f"{RELEASE} lacks a value for {key}"
    assert re.fullmatch(r"[0-9a-f]{64}", values[contract["prefix"] + "BASE_IMAGE_SHA256"])


def test_release_file_is_sourceable_by_sh(host, contract):
    _, values = _release(host)
    key = contract["prefix"] + "VERSION"
    script = f'set -eu; . {RELEASE}; printf "%s" "${key}"'
    out = host.check_output("sh -c %s", script)
    assert out == values[key]
    # Every line is KEY="VALUE": nothing else a shell would execute.
    for line in host.file(RELEASE).content_string.splitlines():
        assert re.fullmatch(r'[A-Z_][A-Z0-9_]*="([^"\\$`]|\\[\\"$`])*"', line), line


def test_release_file_matches_os_info(host, contract):
    if not contract["os_info"]:
        pytest.skip("pass --os-info deploy/<name>.os.info to compare")
    with open(contract["os_info"], encoding="utf-8") as handle:
        os_info = strip_prefix(parse(handle.read()), contract["prefix"])
    _, release = _release(host)
    release = strip_prefix(release, contract["prefix"])
    mismatched = {k: (v, release.get(k)) for k, v in os_info.items() if release.get(k) != v}
    assert not mismatched, f"{RELEASE} differs from os.info: {mismatched}"


# --- Contract 2: storage ---------------------------------------------------------------------------------
def _fstab_entries(host):
    entries = []
    for line in host.file("/etc/fstab").content_string.splitlines():
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            entries.append(fields)
    return entries


def test_fstab_mounts_the_data_drive_by_label(host, contract):
    entries = _fstab_entries(host)
    by_label = [e for e in entries if e[0] == f"LABEL={contract['label']}"]
    at_mountpoint = [e for e in entries if len(e) > 1 and e[1].rstrip("/") == contract["mountpoint"]]
    assert len(by_label) == 1, f"expected one fstab line for LABEL={contract['label']}, found {by_label}"
    assert at_mountpoint == by_label, "another fstab line mounts something at the data mountpoint"
    source, mountpoint, fstype, options, dump, passno = by_label[0]
    assert (mountpoint, fstype, dump, passno) == (contract["mountpoint"], "ext4", "0", "2")
    opts = options.split(",")
    assert opts[:2] == ["defaults", "nofail"]
    timeouts = [int(m.group(1)) for m in map(FSTAB_OPTION_TIMEOUT.match, opts) if m]
    assert len(timeouts) == 1, "exactly one x-systemd.device-timeout option"
    if contract["timeout"] is not None:
        assert timeouts[0] == contract["timeout"]
    else:
        assert 1 <= timeouts[0] <= 90, "the device timeout must be short so a missing drive never stalls boot"


def test_bare_mountpoint_is_not_writable(host, contract, target):
    mountpoint = contract["mountpoint"]
    drive = host.run("blkid -L %s", contract["label"]) if target == "device" else None
    if drive is not None and drive.rc == 0:
        mount = host.mount_point(mountpoint)
        assert mount.exists, f"the DATA drive {drive.stdout.strip()} is present but not mounted at {mountpoint}"
        assert mount.filesystem == "ext4"
        return
    if target == "device":
        assert not host.mount_point(mountpoint).exists, "something else is mounted on the data mountpoint"
    d = host.file(mountpoint)
    assert d.is_directory and d.user == "root" and d.group == "root"
    assert d.mode == 0, f"bare {mountpoint} has mode {d.mode:o}, expected 0000"
    probe = f"{mountpoint}/.pibake-contract-probe"
    result = host.run("sh -c %s", f"touch {shlex.quote(probe)}")
    if result.rc == 0:
        host.run("rm -f %s", probe)
    assert result.rc != 0, f"root could write into the bare {mountpoint}: data would land on the root filesystem"


def test_bare_mountpoint_is_immutable(host, contract, target):
    if target == "device" and host.mount_point(contract["mountpoint"]).exists:
        pytest.skip("the DATA drive is mounted; the bare directory below it is not visible")
    if host.backend.NAME == "chroot":
        # Read the flag from the host side: images need not carry e2fsprogs' lsattr.
        path = os.path.join(host.backend.name, contract["mountpoint"].lstrip("/"))
        assert mg.get_flags(path) & mg.FS_IMMUTABLE_FL, f"{contract['mountpoint']} lacks the immutable attribute"
        return
    result = host.run("lsattr -d %s", contract["mountpoint"])
    if result.rc != 0:
        pytest.skip(f"lsattr unavailable: {result.stderr.strip()}")
    assert "i" in result.stdout.split()[0], result.stdout


def test_services_on_the_data_drive_require_its_mount(host, contract):
    dropins = host.run("sh -c %s", "ls /etc/systemd/system/*.d/50-ourbox-data.conf 2>/dev/null")
    for path in dropins.stdout.split():
        assert f"RequiresMountsFor={contract['mountpoint']}" in host.file(path).content_string


def test_fstrim_timer_enabled(host):
    assert host.run("systemctl is-enabled fstrim.timer").stdout.strip() == "enabled"


# --- A sealed image: no identity, no caches --------------------------------------------------------------
class TestSealedImage:
    @pytest.fixture(autouse=True)
    def _only_images(self, target):
        if target != "image":
            pytest.skip("applies to a built image, not a booted device")

    def test_no_ssh_host_keys(self, host):
        keys = host.run("sh -c %s", "ls /etc/ssh/ssh_host_* 2>/dev/null").stdout.split()
        assert keys == []

    def test_machine_id_present_and_empty(self, host):
        f = host.file("/etc/machine-id")
        assert f.is_file and f.size == 0
        dbus = host.file("/var/lib/dbus/machine-id")
        assert not dbus.exists or (dbus.is_symlink and dbus.linked_to == "/etc/machine-id")

    def test_no_apt_lists_or_caches(self, host):
        lists = host.run("sh -c %s", "ls -A /var/lib/apt/lists 2>/dev/null").stdout.split()
        assert set(lists) <= {"lock", "partial", "auxfiles"}
        assert host.run("sh -c %s", "ls -A /var/lib/apt/lists/partial 2>/dev/null").stdout.strip() == ""
        caches = host.run("sh -c %s", "ls /var/cache/apt/*.bin /var/cache/apt/archives/*.deb 2>/dev/null")
        assert caches.stdout.strip() == ""

    def test_first_boot_is_armed(self, host):
        if not host.file("/usr/local/sbin/pibake-firstboot").exists:
            pytest.skip("the firstboot role is not in this image")
        assert not host.file("/var/lib/pibake/firstboot/done").exists
        for unit in ("pibake-firstboot-identity.service", "pibake-firstboot.service"):
            assert host.run("systemctl is-enabled %s", unit).stdout.strip() == "enabled", unit


# --- A booted device: first boot ran --------------------------------------------------------------------
class TestBootedDevice:
    @pytest.fixture(autouse=True)
    def _only_devices(self, target):
        if target != "device":
            pytest.skip("applies to a booted device")

    def test_identity_was_created(self, host):
        assert re.fullmatch(r"[0-9a-f]{32}", host.file("/etc/machine-id").content_string.strip())
        keys = host.run("sh -c %s", "ls /etc/ssh/ssh_host_*_key 2>/dev/null").stdout.split()
        assert keys, "no SSH host keys"

    def test_first_boot_finished(self, host):
        if not host.file("/usr/local/sbin/pibake-firstboot").exists:
            pytest.skip("the firstboot role is not on this device")
        assert host.file("/var/lib/pibake/firstboot/done").exists
        secrets = host.file("/var/lib/pibake/secrets")
        if secrets.exists:
            assert secrets.mode == 0o700
            for name in secrets.listdir():
                assert host.file(f"/var/lib/pibake/secrets/{name}").mode == 0o600
