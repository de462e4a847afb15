# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""What pibake.image.networking must leave in an image (testinfra, chroot backend)."""

import pytest

WANTS = "/etc/systemd/system"


@pytest.mark.parametrize("name", ["network-manager", "hostapd", "dnsmasq", "nftables", "iw", "rfkill"])
def test_packages_installed(host, name):
    assert host.package(name).is_installed


def test_backend_enabled_by_link(host):
    assert host.file(f"{WANTS}/multi-user.target.wants/NetworkManager.service").is_symlink


def test_hostapd_and_dnsmasq_left_to_pibake(host):
    # started by pibake-ap.service only in the access point modes
    assert not host.file(f"{WANTS}/multi-user.target.wants/hostapd.service").exists
    assert not host.file(f"{WANTS}/multi-user.target.wants/dnsmasq.service").exists
    assert not host.file(f"{WANTS}/hostapd.service").is_symlink  # not masked


def test_mode_units_enabled(host):
    assert host.file(f"{WANTS}/multi-user.target.wants/pibake-network-mode.service").is_symlink
    assert host.file(f"{WANTS}/sys-subsystem-net-devices-wlan0.device.wants/pibake-ap.service").is_symlink
    assert host.run("systemd-analyze verify /etc/systemd/system/pibake-network-mode.service").rc == 0


def test_default_mode_and_script(host):
    assert host.file("/etc/pibake/network/mode.default").content_string == "nat_router\n"
    script = host.file("/usr/local/sbin/pibake-network-mode")
    assert script.mode == 0o755
    assert host.check_output("/usr/local/sbin/pibake-network-mode") == "nat_router"
    assert host.run("/usr/local/sbin/pibake-network-mode is-ap").rc == 0


def test_credentials_file_secret(host):
    creds = host.file("/var/lib/pibake/ap-credentials")
    assert creds.mode == 0o600
    assert creds.user == "root"
    assert creds.content_string == "SSID=PibakeTest\nPASSPHRASE=not-a-secret-1234\n"


def test_hostapd_base_has_country_and_no_secret(host):
    base = host.file("/etc/pibake/network/hostapd.conf.base").content_string
    assert "interface=wlan0" in base
    assert "country_code=DE" in base
    assert not [line for line in base.splitlines() if line.startswith(("wpa_passphrase=", "ssid="))]
    assert "not-a-secret-1234" not in base


def test_dnsmasq_config_valid(host):
    conf = host.file("/etc/dnsmasq.d/pibake-ap.conf").content_string
    assert "dhcp-range=192.168.42.50,192.168.42.199,255.255.255.0,12h" in conf
    assert "address=/cubeos.cube/192.168.42.1" in conf
    assert host.run("dnsmasq --test --conf-file=/etc/dnsmasq.d/pibake-ap.conf").rc == 0


def test_nat_rules(host):
    rules = host.file("/etc/pibake/network/nftables/nat_router.nft").content_string
    assert 'iifname "wlan0" oifname "eth0" masquerade' in rules
    assert "delete table inet pibake" in host.file("/etc/pibake/network/nftables/client.nft").content_string


def test_wifi_country_on_cmdline(host):
    tokens = host.file("/boot/firmware/cmdline.txt").content_string.split()
    assert "cfg80211.ieee80211_regdom=DE" in tokens
    assert tokens[0] == "console=serial0,115200"


def test_no_live_change_in_image_mode(host):
    # the mode was not applied to the build host: no state file, no hostapd.conf rendered yet
    assert not host.file("/var/lib/pibake/network-mode").exists
    assert not host.file("/etc/hostapd/hostapd.conf").exists
