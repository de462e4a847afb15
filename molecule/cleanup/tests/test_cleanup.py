# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Molecule verify for pibake.image.cleanup: nothing of the build or the identity is left, nothing else is lost."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())


def _ls(host, pattern):
    return host.run("sh -c %s", f"ls -A {pattern} 2>/dev/null").stdout.split()


def test_no_ssh_host_keys_but_config_kept(host):
    assert _ls(host, "/etc/ssh/ssh_host_*") == []
    assert host.file("/etc/ssh/sshd_config").exists


def test_machine_id_empty_and_dbus_linked(host):
    f = host.file("/etc/machine-id")
    assert f.is_file and f.size == 0
    dbus = host.file("/var/lib/dbus/machine-id")
    assert dbus.is_symlink and dbus.linked_to == "/etc/machine-id"
    assert not host.file("/var/lib/systemd/random-seed").exists


def test_no_apt_caches_or_lists(host):
    assert set(_ls(host, "/var/lib/apt/lists")) <= {"lock", "partial", "auxfiles"}
    assert _ls(host, "/var/lib/apt/lists/partial") == []
    assert _ls(host, "/var/cache/apt/*.bin") == []
    assert _ls(host, "/var/cache/apt/archives/*.deb") == []
    assert host.run("dpkg -s openssh-server").rc == 0, "installed packages stay installed"


def test_logs_truncated_and_rotated_removed(host):
    for path in ("/var/log/syslog", "/var/log/dpkg.log", "/var/log/apt/history.log"):
        f = host.file(path)
        assert f.exists and f.size == 0, path
    assert not host.file("/var/log/syslog.1").exists
    assert not host.file("/var/log/auth.log.2.gz").exists
    assert host.file("/var/log/journal").is_directory
    assert _ls(host, "/var/log/journal") == []


def test_temp_dirs_empty(host):
    assert _ls(host, "/tmp") == []
    assert _ls(host, "/var/tmp") == []
    assert host.file("/tmp").mode == 0o1777


def test_histories_and_resolv_leftovers_gone(host):
    for path in ("/root/.bash_history", "/root/.python_history", "/home/admin/.bash_history",
                 "/etc/resolv.conf.pibake-orig"):
        assert not host.file(path).exists, path
    assert host.file("/etc/resolv.conf").exists


def test_first_boot_still_armed(host):
    assert host.file("/usr/local/sbin/pibake-firstboot").exists
    assert host.file("/etc/systemd/system/multi-user.target.wants/pibake-firstboot-identity.service").is_symlink


def test_sealed_image_checks_of_the_contract_suite_pass(host):
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join(REPO, "tests", "contracts"),
         "--connection=chroot", f"--hosts={host.backend.name}", "-k", "TestSealedImage"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "4 passed" in proc.stdout
