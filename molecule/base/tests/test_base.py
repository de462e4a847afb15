# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""What pibake.image.base must leave in an image (testinfra, chroot backend)."""

import pytest


@pytest.mark.parametrize("name", ["openssh-server", "sudo", "locales", "tzdata", "keyboard-configuration", "less"])
def test_packages_installed(host, name):
    assert host.package(name).is_installed


def test_package_removed(host):
    assert not host.package("nano").is_installed


def test_apt_pin(host):
    pref = host.file("/etc/apt/preferences.d/pibake-no-snapd.pref")
    assert pref.content_string.splitlines()[1:] == ["Package: snapd", "Pin: release *", "Pin-Priority: -10"]


def test_locale_and_timezone(host):
    assert "LANG=en_GB.UTF-8" in host.file("/etc/default/locale").content_string
    assert "de_DE.utf8" in host.check_output("localedef --list-archive")
    assert host.file("/etc/localtime").linked_to == "/usr/share/zoneinfo/Europe/Berlin"
    assert host.file("/etc/timezone").content_string == "Europe/Berlin\n"
    assert 'XKBLAYOUT="de"' in host.file("/etc/default/keyboard").content_string


def test_hostname(host):
    assert host.file("/etc/hostname").content_string == "pibake-molecule\n"
    assert "127.0.1.1\tpibake-molecule" in host.file("/etc/hosts").content_string.splitlines()


def test_admin_user_locked_with_keys(host):
    user = host.user("cubeos")
    assert user.exists
    assert "sudo" in user.groups
    assert host.check_output("getent shadow cubeos").split(":")[1] == "!"
    keys = host.file("/home/cubeos/.ssh/authorized_keys")
    assert keys.mode == 0o600
    assert keys.user == "cubeos"
    assert keys.content_string.startswith("ssh-ed25519 AAAAC3")
    assert host.file("/home/cubeos/.ssh").mode == 0o700


def test_sudo_rule_valid(host):
    rule = host.file("/etc/sudoers.d/010_pibake-admin")
    assert rule.mode == 0o440
    assert "cubeos ALL=(ALL:ALL) NOPASSWD: ALL" in rule.content_string
    assert host.run("visudo -cf /etc/sudoers").rc == 0


def test_sshd_rejects_passwords(host):
    effective = host.check_output("/usr/local/lib/pibake/pibake-sshd-check --effective").splitlines()
    assert "passwordauthentication no" in effective
    assert "kbdinteractiveauthentication no" in effective
    assert "permitrootlogin no" in effective
    assert "clientaliveinterval 60" in effective


def test_ssh_enabled_by_link(host):
    assert host.file("/etc/systemd/system/multi-user.target.wants/ssh.service").is_symlink
    assert host.service("ssh").is_enabled


def test_sysctl_and_journald(host):
    sysctl = host.file("/etc/sysctl.d/90-pibake.conf").content_string
    assert "vm.swappiness = 10" in sysctl
    assert "net.ipv4.tcp_syncookies = 1" in sysctl
    assert "SystemMaxUse=64M" in host.file("/etc/systemd/journald.conf.d/90-pibake.conf").content_string


def test_systemd_watchdog(host):
    conf = host.file("/etc/systemd/system.conf.d/90-pibake-watchdog.conf").content_string
    assert "RuntimeWatchdogSec=15s" in conf
    assert not host.package("watchdog").is_installed


def test_config_txt_edited_in_sections(host):
    lines = host.file("/boot/firmware/config.txt").content_string.splitlines()
    assert lines.index("dtparam=pciex1_gen=3") == lines.index("dtoverlay=dwc2,dr_mode=host") + 1
    assert lines.index("dtparam=watchdog=on") > lines.index("[all]")
    assert lines[2] == "camera_auto_detect=0"
    assert "dtparam=audio=on" not in lines


def test_cmdline_txt_one_line_in_order(host):
    content = host.file("/boot/firmware/cmdline.txt").content_string
    assert content.count("\n") == 1
    assert content.split() == [
        "console=serial0,115200", "root=PARTUUID=0badcafe-02", "rootfstype=ext4", "fsck.repair=yes",
        "rootwait", "cgroup_enable=memory", "quiet",
    ]


def test_nothing_started_in_image_mode(host):
    # no sshd was started on the build host by the package install (policy-rc.d guard)
    assert not host.file("/run/sshd.pid").exists
