# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake-network-mode (roles/networking/files) run against a fake root: stub commands record their calls."""

import os
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(REPO, "roles", "networking", "files", "pibake-network-mode")
STUBS = ("nft", "sysctl", "systemctl", "nmcli", "ip", "rfkill", "iptables")


@pytest.fixture()
def env(tmp_path):
    conf = tmp_path / "etc"
    (conf / "nftables").mkdir(parents=True)
    (conf / "network.conf").write_text(
        "BACKEND=networkmanager\nAP_ENABLED=yes\nAP_INTERFACE=wlan0\nUPLINK_INTERFACE=eth0\n"
        f"AP_ADDRESS=192.168.42.1/24\nCREDENTIALS_FILE={tmp_path}/creds\n")
    (conf / "mode.default").write_text("offline_ap\n")
    (conf / "hostapd.conf.base").write_text("interface=wlan0\n")
    for mode in ("offline_ap", "nat_router", "client"):
        (conf / "nftables" / f"{mode}.nft").write_text(f"# {mode}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for name in STUBS:
        stub = bin_dir / name
        # systemctl is-active answers "running" so that the live NetworkManager path is exercised
        stub.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 0\n')
        stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    return {
        "tmp": tmp_path, "log": log,
        "env": dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", PIBAKE_NETWORK_CONF_DIR=str(conf),
                    PIBAKE_STATE_DIR=str(tmp_path / "state"), PIBAKE_RUN_DIR=str(tmp_path / "run"),
                    PIBAKE_HOSTAPD_CONF=str(tmp_path / "hostapd" / "hostapd.conf")),
    }


def run(env, *args, check=True):
    proc = subprocess.run(["sh", SCRIPT, *args], env=env["env"], capture_output=True, text=True, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def calls(env):
    return env["log"].read_text().splitlines() if env["log"].exists() else []


def test_prints_default_mode(env):
    assert run(env).stdout.strip() == "offline_ap"
    assert run(env, "is-ap").returncode == 0


def test_boot_apply_touches_no_service(env):
    run(env, "apply", "--boot")
    assert calls(env) == [f"nft -f {env['tmp']}/etc/nftables/offline_ap.nft"]
    nm_conf = env["tmp"] / "run" / "NetworkManager" / "conf.d" / "90-pibake-ap.conf"
    assert "unmanaged-devices=interface-name:wlan0" in nm_conf.read_text()


def test_switch_to_router_is_saved_and_applied(env):
    run(env, "nat_router")
    assert (env["tmp"] / "state" / "network-mode").read_text() == "nat_router\n"
    log = calls(env)
    assert f"nft -f {env['tmp']}/etc/nftables/nat_router.nft" in log
    assert "sysctl -q -w net.ipv4.ip_forward=1" in log
    assert run(env).stdout.strip() == "nat_router"


def test_switch_to_client_releases_interface(env):
    run(env, "client")
    assert run(env, "is-ap", check=False).returncode == 1
    assert not (env["tmp"] / "run" / "NetworkManager" / "conf.d" / "90-pibake-ap.conf").exists()
    assert "systemctl stop pibake-ap.service" in calls(env)
    assert not any(c.startswith("sysctl") for c in calls(env))


def test_unknown_mode_refused(env):
    proc = run(env, "bridge", check=False)
    assert proc.returncode == 1
    assert "unknown mode" in proc.stderr
    assert not (env["tmp"] / "state" / "network-mode").exists()


def test_ap_up_renders_hostapd_from_credentials(env):
    (env["tmp"] / "creds").write_text("SSID=CubeOS-A1B2C3\nPASSPHRASE=correct horse battery\n")
    run(env, "ap-up")
    conf = env["tmp"] / "hostapd" / "hostapd.conf"
    assert conf.read_text() == "interface=wlan0\nssid=CubeOS-A1B2C3\nwpa_passphrase=correct horse battery\n"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    log = calls(env)
    assert "ip address replace 192.168.42.1/24 dev wlan0" in log
    assert "systemctl --no-block restart hostapd.service dnsmasq.service" in log


def test_ap_up_without_credentials_fails_clearly(env):
    proc = run(env, "ap-up", check=False)
    assert proc.returncode == 1
    assert "no access point credentials" in proc.stderr
    assert not (env["tmp"] / "hostapd" / "hostapd.conf").exists()


def test_short_passphrase_refused(env):
    (env["tmp"] / "creds").write_text("SSID=x\nPASSPHRASE=short\n")
    assert run(env, "ap-up", check=False).returncode == 1
