# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""What pibake.image.docker must leave in an image (testinfra, chroot backend)."""

import json
import os

import pytest

PRELOAD = "/var/lib/pibake/preload"


@pytest.fixture(scope="module")
def registry():
    """What molecule/docker/registry_ctl.py pushed (addresses, pinned refs, arm64 config digests)."""
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "registry", "registry.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.mark.parametrize("name", ["docker.io", "docker-compose"])
def test_packages_installed(host, name):
    assert host.package(name).is_installed


@pytest.mark.parametrize("unit", ["docker.service", "docker.socket", "containerd.service"])
def test_units_enabled_by_link(host, unit):
    assert host.service(unit).is_enabled


def test_daemon_json(host):
    daemon = json.loads(host.file("/etc/docker/daemon.json").content_string)
    assert daemon["log-driver"] == "json-file"
    assert daemon["log-opts"] == {"max-size": "20m", "max-file": "3"}
    assert daemon["storage-driver"] == "overlay2"
    assert daemon["data-root"] == "/var/lib/docker"
    assert daemon["live-restore"] is True
    assert host.run("dockerd --validate --config-file=/etc/docker/daemon.json").rc == 0


def test_admin_in_docker_group(host):
    assert "docker" in host.user("cubeos").groups


def test_layout(host):
    assert host.file("/cubeos/apps").is_directory
    assert host.file("/cubeos/config").mode == 0o750
    assert host.file("/cubeos/data").user == "cubeos"
    assert host.file("/cubeos/config/defaults.env").mode == 0o640


def test_stacks_and_manifest(host):
    compose = host.file("/cubeos/coreapps/pihole/docker-compose.yml").content_string
    assert "image: pihole/pihole:2024.07.0" in compose
    assert "${PIHOLE_PASSWORD}" in compose
    env = host.file("/cubeos/coreapps/pihole/.env")
    assert env.mode == 0o600
    assert env.content_string == "PIHOLE_PASSWORD=molecule-only\n"
    manifest = json.loads(host.file("/etc/pibake/docker-stacks.json").content_string)
    assert [(s["name"], s["deploy"]) for s in manifest] == [("pihole", "compose"), ("dashboard", "swarm")]
    assert manifest[1]["file"] == "/cubeos/apps/dashboard/docker-compose.yml"


def test_preload_archives_match_registry(host, registry):
    lines = [line.split("\t") for line in host.file(f"{PRELOAD}/images.tsv").content_string.splitlines()
             if line and not line.startswith("#")]
    assert [line[1] for line in lines] == [image["name"] for image in registry["images"]]
    for (file, name, ref, sha, image_id), image in zip(lines, registry["images"]):
        assert ref == image["ref"]
        # the image ID docker will show after loading = the arm64 config digest in the registry
        assert image_id == image["arm64_config_digest"], name
        archive = host.file(f"{PRELOAD}/{file}")
        assert archive.mode == 0o644
        assert archive.sha256sum == sha


def test_preload_loader_installed_and_enabled(host):
    assert host.file("/usr/local/sbin/pibake-docker-preload").mode == 0o755
    assert host.service("pibake-docker-preload.service").is_enabled
    assert host.run("systemd-analyze verify /etc/systemd/system/pibake-docker-preload.service").rc == 0
    # nothing was loaded during the build
    assert host.file(f"{PRELOAD}/loaded").is_directory
    assert host.run(f"ls -A {PRELOAD}/loaded").stdout == ""


def test_no_docker_daemon_ran(host):
    assert not host.file("/var/lib/docker/image").exists
