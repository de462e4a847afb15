# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Acceptance criteria of the built profile images, checked on the re-attached images (no boot).

cubeos (issue 3): key-only SSH, the access point's hostapd and dnsmasq settings, Docker installed and enabled, the
preload archives carrying exactly the images pinned in the test registry.
ourbox-mini (issue 4): /etc/ourbox/release agrees with deploy/os.info, the DATA drive's fstab line (seed 000), and
no identity, package lists or downloaded packages left in the image.
"""

import gzip
import hashlib
import io
import json
import os
import re
import shlex
import tarfile

import pytest

from ansible_collections.pibake.image.plugins.module_utils._release_info import parse as parse_release

pytestmark = pytest.mark.e2e

UNIT_DIRS = ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system")
PRELOAD_DIR = "/var/lib/pibake/preload"
NETWORK_CONF_DIR = "/etc/pibake/network"

# The effective sshd configuration with throw-away host keys in a temporary folder of the image (an image has no
# host keys: they are made at first boot). The folder, and /run/sshd if this made it, are removed on exit.
SSHD_EFFECTIVE = r"""
set -eu
tmp=$(mktemp -d /tmp/pibake-e2e-sshd.XXXXXX)
made_run=""
cleanup() { rm -rf "$tmp"; if [ -n "$made_run" ]; then rmdir /run/sshd; fi; }
trap cleanup EXIT
if [ ! -d /run/sshd ]; then mkdir -p /run/sshd; made_run=1; fi
mkdir -p "$tmp/etc/ssh"
ssh-keygen -A -f "$tmp" >/dev/null
set --
for key in "$tmp"/etc/ssh/ssh_host_*_key; do set -- "$@" -h "$key"; done
/usr/sbin/sshd -T -f /etc/ssh/sshd_config -C user=cubeos,host=client.example,addr=192.0.2.10 "$@"
"""


def _key_values(text, sep="="):
    """KEY<sep>VALUE lines (comments and blank lines skipped) as a dict; a repeated key keeps its last value."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and sep in line:
            key, _, value = line.partition(sep)
            values[key.strip()] = value.strip()
    return values


def _unit_file(host, unit):
    for folder in UNIT_DIRS:
        if host.file(f"{folder}/{unit}").exists:
            return f"{folder}/{unit}"
    return None


def _wanted_by(host, unit_path):
    """The WantedBy= targets of a unit file's [Install] section."""
    targets, section = [], ""
    for line in host.file(unit_path).content_string.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Install]" and line.startswith("WantedBy="):
            targets.extend(line[len("WantedBy="):].split())
    return targets


def _assert_enabled(host, unit):
    """The unit's enablement symlinks exist in /etc/systemd/system/<target>.wants and resolve to the unit."""
    unit_path = _unit_file(host, unit)
    assert unit_path, f"{unit} is not installed (no unit file in {', '.join(UNIT_DIRS)})"
    targets = _wanted_by(host, unit_path)
    assert targets, f"{unit_path} has no WantedBy= in [Install]; it cannot be enabled"
    for target in targets:
        link = host.file(f"/etc/systemd/system/{target}.wants/{unit}")
        assert link.is_symlink, f"{unit} is not enabled: /etc/systemd/system/{target}.wants/{unit} is missing"
        resolved = link.linked_to
        assert os.path.basename(resolved) == unit and host.file(resolved).is_file, (
            f"/etc/systemd/system/{target}.wants/{unit} points to {resolved}, not to an installed {unit}")


def _is_masked(host, unit):
    unit_file = host.file(f"/etc/systemd/system/{unit}")
    return unit_file.is_symlink and unit_file.linked_to == "/dev/null"


def _docker_reference(name):
    """A name:tag as Docker stores it: docker.io/ in front when it names no registry, library/ for official images."""
    first, _, rest = name.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return name
    return f"docker.io/{name}" if rest else f"docker.io/library/{name}"


def _sha256(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------- cubeos (issue 3)

def test_cubeos_sshd_rejects_passwords(cubeos_root):
    before = cubeos_root.run("ls -A /tmp /etc/ssh").stdout
    result = cubeos_root.run(SSHD_EFFECTIVE)
    assert result.rc == 0, f"sshd -T failed in the image (rc {result.rc}): {result.stderr}"
    effective = {}
    for line in result.stdout.splitlines():
        key, _, value = line.partition(" ")
        effective.setdefault(key.lower(), value.strip())
    wanted = {"passwordauthentication": "no", "kbdinteractiveauthentication": "no", "permitrootlogin": "no"}
    got = {key: effective.get(key) for key in wanted}
    assert got == wanted, f"sshd still accepts passwords or root logins; effective settings: {got}"
    assert cubeos_root.run("ls -A /tmp /etc/ssh").stdout == before, "the sshd check left files in the image"


def test_cubeos_hostapd_is_set_up_for_the_access_point(cubeos_root):
    assert cubeos_root.package("hostapd").is_installed, "hostapd is not installed"
    assert not _is_masked(cubeos_root, "hostapd.service"), "hostapd.service is masked: the AP could never start"
    base = cubeos_root.file(f"{NETWORK_CONF_DIR}/hostapd.conf.base")
    assert base.is_file, f"{base.path} is missing: pibake-network-mode has no hostapd settings to bring the AP up"
    conf = _key_values(base.content_string)
    expected = {"interface": "wlan0", "driver": "nl80211", "wpa": "2", "wpa_key_mgmt": "WPA-PSK",
                "rsn_pairwise": "CCMP", "country_code": "US"}
    got = {key: conf.get(key) for key in expected}
    assert got == expected, f"{base.path} does not set up a WPA2 AP on wlan0: {got}"
    # SSID and passphrase are per device (first boot); none may be baked into the image.
    baked = sorted({"ssid", "wpa_passphrase", "wpa_psk"} & set(conf))
    assert not baked, f"{base.path} carries credentials {baked}; they must come from the device's credentials file"
    network = _key_values(cubeos_root.file(f"{NETWORK_CONF_DIR}/network.conf").content_string)
    assert (network.get("AP_ENABLED"), network.get("AP_INTERFACE"), network.get("AP_ADDRESS")) == (
        "yes", "wlan0", "10.42.24.1/24"), f"{NETWORK_CONF_DIR}/network.conf: {network}"
    mode = cubeos_root.file(f"{NETWORK_CONF_DIR}/mode.default").content_string.strip()
    assert mode == "offline_ap", f"the default network mode is {mode!r}, not the profile's offline_ap"
    assert cubeos_root.file("/usr/local/sbin/pibake-network-mode").mode & 0o111, "pibake-network-mode is not executable"
    _assert_enabled(cubeos_root, "pibake-ap.service")


def test_cubeos_dnsmasq_serves_the_access_point(cubeos_root):
    assert cubeos_root.package("dnsmasq").is_installed, "dnsmasq is not installed"
    path = "/etc/dnsmasq.d/pibake-ap.conf"
    conf_file = cubeos_root.file(path)
    assert conf_file.is_file, f"{path} is missing: the AP's clients would get no address"
    lines = [line.strip() for line in conf_file.content_string.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    expected = ["interface=wlan0", "dhcp-range=10.42.24.10,10.42.24.250,255.255.255.0,12h",
                "dhcp-option=option:router,10.42.24.1", "dhcp-option=option:dns-server,10.42.24.1", "domain=cube",
                # Pi-hole answers DNS on the device: dnsmasq must not bind port 53.
                "port=0"]
    missing = [line for line in expected if line not in lines]
    assert not missing, f"{path} lacks {missing}; it holds {lines}"
    check = cubeos_root.run(f"/usr/sbin/dnsmasq --test --conf-file={path}")
    assert check.rc == 0, f"dnsmasq rejects {path}: {check.stdout}{check.stderr}"


def test_cubeos_docker_is_installed_and_enabled(cubeos_root):
    dockerd = cubeos_root.file("/usr/sbin/dockerd")
    assert dockerd.is_file and dockerd.mode & 0o111, "/usr/sbin/dockerd is missing or not executable"
    version = cubeos_root.run("/usr/sbin/dockerd --version")
    assert version.rc == 0 and "Docker version" in version.stdout, (
        f"dockerd does not run in the image: {version.stdout}{version.stderr}")
    for unit in ("docker.service", "docker.socket", "containerd.service"):
        _assert_enabled(cubeos_root, unit)
        assert not _is_masked(cubeos_root, unit), f"{unit} is masked"
    daemon = json.loads(cubeos_root.file("/etc/docker/daemon.json").content_string)
    assert daemon.get("log-opts", {}).get("max-size") == "10m", f"/etc/docker/daemon.json: {daemon}"


def _archive(data, path):
    """manifest entry, config bytes and {layer name: bytes} of a docker-archive (the bytes of the file at path)."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        def member(name):
            handle = tar.extractfile(name)
            assert handle is not None, f"{path}: {name} is not a file"
            return handle.read()
        manifest = json.loads(member("manifest.json"))
        assert isinstance(manifest, list) and len(manifest) == 1, f"{path} holds {len(manifest)} images, not 1"
        entry = manifest[0]
        return entry, member(entry["Config"]), {name: member(name) for name in entry.get("Layers") or []}


def test_cubeos_preload_archives_match_the_registry_digests(cubeos_root, cubeos_test_images):
    pinned = {image["name"]: image for image in cubeos_test_images["images"].values()}
    tsv = cubeos_root.file(f"{PRELOAD_DIR}/images.tsv")
    assert tsv.is_file, f"{tsv.path} is missing: the first boot would load no images"
    rows = {}
    for line in tsv.content_string.splitlines():
        if line and not line.startswith("#"):
            fields = line.split("\t")
            assert len(fields) == 5, f"{tsv.path}: malformed line {line!r}"
            rows[fields[1]] = dict(zip(("file", "name", "ref", "sha256", "image_id"), fields))
    assert sorted(rows) == sorted(pinned), f"{tsv.path} lists {sorted(rows)}, the build pinned {sorted(pinned)}"
    done = cubeos_root.run(f"ls -A {PRELOAD_DIR}/loaded").stdout.split()
    assert done == [], f"{PRELOAD_DIR}/loaded has records {done}: the first boot would skip loading those images"
    _assert_enabled(cubeos_root, "pibake-docker-preload.service")
    for name, image in sorted(pinned.items()):
        row = rows[name]
        assert row["ref"] == image["ref"] and row["ref"].endswith("@" + image["digest"]), (
            f"{name}: the image records source {row['ref']}, the registry holds {image['ref']}")
        assert row["image_id"] == image["image_id"], (
            f"{name}: the image expects ID {row['image_id']}, the registry's image has {image['image_id']}")
        path = f"{PRELOAD_DIR}/{row['file']}"
        archive = cubeos_root.file(path)
        assert archive.is_file, f"{name}: preload archive {path} is missing"
        data = archive.content
        assert _sha256(data) == "sha256:" + row["sha256"], f"{name}: {path} does not match its sha256 in images.tsv"
        entry, config, layers = _archive(data, path)
        assert _sha256(config) == image["image_id"], (
            f"{name}: {path} holds image {_sha256(config)}, not the registry's {image['image_id']}")
        tags = [_docker_reference(tag) for tag in entry.get("RepoTags") or []]
        assert _docker_reference(name) in tags, f"{name}: {path} would load as {entry.get('RepoTags')}"
        cfg = json.loads(config)
        assert cfg.get("architecture") == "arm64", f"{name}: {path} is for {cfg.get('architecture')}, not arm64"
        diff_ids = cfg.get("rootfs", {}).get("diff_ids", [])
        got = []
        for layer in entry.get("Layers") or []:
            blob = layers[layer]
            got.append(_sha256(gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob))
        assert got and got == diff_ids, f"{name}: the layers of {path} are {got}, the image config says {diff_ids}"


# ---------------------------------------------------------------- ourbox-mini (issue 4)

OURBOX_PREFIX = "OURBOX_"
OURBOX_REQUIRED = ("SKU", "VARIANT", "VERSION", "BUILD_TIME", "GIT_REVISION", "BASE_IMAGE", "BASE_IMAGE_SHA256",
                   "PIBAKE_VERSION")


def test_ourbox_release_file_matches_deploy_os_info(ourbox_root, ourbox_build):
    release_file = ourbox_root.file("/etc/ourbox/release")
    assert release_file.is_file, "/etc/ourbox/release is missing"
    release = parse_release(release_file.content_string)
    with open(os.path.join(ourbox_build.deploy, "os.info"), encoding="utf-8") as handle:
        os_info = parse_release(handle.read())
    unprefixed = sorted(key for key in release if not key.startswith(OURBOX_PREFIX))
    assert not unprefixed, f"/etc/ourbox/release has keys without the {OURBOX_PREFIX} prefix: {unprefixed}"
    stripped = {key[len(OURBOX_PREFIX):]: value for key, value in release.items()}
    missing = [name for name in OURBOX_REQUIRED if not stripped.get(name)]
    assert not missing, f"/etc/ourbox/release lacks the contract's {missing}: {release}"
    differ = {key: (value, os_info.get(key)) for key, value in stripped.items() if os_info.get(key) != value}
    assert not differ, f"/etc/ourbox/release and deploy/os.info differ (release, os.info): {differ}"
    assert (stripped["SKU"], stripped["VARIANT"], stripped["VERSION"]) == ("ourbox-mini", "dev", "e2e"), stripped


def _seconds(span):
    """A systemd time span such as 30s, 30, 1min or 1min 30s in seconds (None when unreadable)."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "ms": 0.001, "msec": 0.001}
    total = 0.0
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    if not parts or re.sub(r"[\d.\sa-z]", "", span):
        return None
    for number, unit in parts:
        if unit not in units:
            return None
        total += float(number) * units[unit]
    return total


def test_ourbox_fstab_mounts_the_data_drive_as_the_contract_says(ourbox_root):
    fstab = ourbox_root.file("/etc/fstab").content_string
    entries = [shlex.split(line) for line in fstab.splitlines() if line.strip() and not line.strip().startswith("#")]
    data = [fields for fields in entries
            if fields[0] == "LABEL=OURBOX_DATA" or (len(fields) > 1 and fields[1].rstrip("/") == "/var/lib/ourbox")]
    assert len(data) == 1, f"/etc/fstab needs exactly one line for the DATA drive, found {data}:\n{fstab}"
    fields = data[0]
    assert fields[:3] == ["LABEL=OURBOX_DATA", "/var/lib/ourbox", "ext4"], (
        f"the DATA drive must be ext4 LABEL=OURBOX_DATA mounted at /var/lib/ourbox: {fields}")
    options = fields[3].split(",") if len(fields) > 3 else []
    assert "nofail" in options, f"without nofail the device cannot boot with the DATA drive missing: {options}"
    assert "noauto" not in options, f"noauto: the DATA drive would never be mounted at boot: {options}"
    timeouts = [opt.split("=", 1)[1] for opt in options if opt.startswith("x-systemd.device-timeout=")]
    assert len(timeouts) == 1, f"the DATA drive needs one x-systemd.device-timeout= option: {options}"
    seconds = _seconds(timeouts[0])
    # "short": below systemd's default device timeout of 90 s
    assert seconds is not None and 0 < seconds < 90, f"the device timeout {timeouts[0]} is not short (< 90 s)"


def test_ourbox_brings_up_its_wired_network_with_network_manager(ourbox_root):
    wants = ourbox_root.file("/etc/systemd/system/multi-user.target.wants/NetworkManager.service")
    assert wants.is_symlink, "NetworkManager is not enabled: the device would boot without a network"
    assert ourbox_root.file("/usr/sbin/NetworkManager").is_file, "network-manager is not installed"
    mode = ourbox_root.file(f"{NETWORK_CONF_DIR}/mode.default").content_string.strip()
    assert mode == "client", f"the default network mode is {mode!r}, not the profile's client"
    assert not ourbox_root.package("hostapd").is_installed, "ourbox-mini has no access point, yet hostapd is installed"


def test_ourbox_image_carries_no_identity(ourbox_root):
    assert ourbox_root.file("/etc/ssh").is_directory, "/etc/ssh is missing: is openssh-server installed?"
    keys = ourbox_root.check_output("find /etc/ssh -maxdepth 1 -name 'ssh_host_*'")
    assert keys == "", f"SSH host keys are baked into the image (every device would share them): {keys}"
    machine_id = ourbox_root.file("/etc/machine-id")
    assert machine_id.is_file and not machine_id.is_symlink, "/etc/machine-id must exist as an (empty) file"
    assert machine_id.size == 0, f"/etc/machine-id is not empty: {machine_id.content_string!r}"


def test_ourbox_image_has_no_apt_lists_or_downloaded_packages(ourbox_root):
    lists = "/var/lib/apt/lists"
    found = ourbox_root.check_output(f"cd {lists} && find . -mindepth 1").split("\n")
    found = sorted(path[2:] for path in found if path)
    extra = [path for path in found if path not in ("lock", "partial", "auxfiles")]
    assert not extra, f"{lists} still holds package lists: {extra[:20]}"
    archives = "/var/cache/apt/archives"
    if ourbox_root.file(archives).exists:
        debs = ourbox_root.check_output(f"find {archives} -name '*.deb'")
        assert debs == "", f"downloaded packages left in {archives}: {debs}"
