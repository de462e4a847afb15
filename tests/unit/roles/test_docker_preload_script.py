# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake-docker-preload (roles/docker/files) with a fake `docker`: each archive loaded once, verified."""

import hashlib
import os
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(REPO, "roles", "docker", "files", "pibake-docker-preload")
IMAGE_ID = "sha256:" + "ab" * 32


@pytest.fixture()
def preload(tmp_path):
    pdir = tmp_path / "preload"
    pdir.mkdir()
    archive = pdir / "busybox-0123.tar"
    archive.write_bytes(b"fake archive")
    sha = hashlib.sha256(b"fake archive").hexdigest()
    (pdir / "images.tsv").write_text(
        "# header\n" f"busybox-0123.tar\ttest/busybox:1\treg/test/busybox@sha256:{'cd' * 32}\t{sha}\t{IMAGE_ID}\n")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.log"
    docker = bin_dir / "docker"
    # `docker image inspect` answers the ID kept in $FAKE_ID
    docker.write_text(
        f'#!/bin/sh\necho "$*" >> "{log}"\n'
        'case "$1 $2" in "image inspect") echo "$FAKE_ID";; esac\nexit 0\n')
    docker.chmod(docker.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin", PIBAKE_PRELOAD_DIR=str(pdir), FAKE_ID=IMAGE_ID)
    return {"dir": pdir, "archive": archive, "log": log, "env": env}


def run(p, *args):
    return subprocess.run(["sh", SCRIPT, *args], env=p["env"], capture_output=True, text=True, check=False)


def loads(p):
    return [line for line in p["log"].read_text().splitlines() if line.startswith("load")] if p["log"].exists() else []


def test_loads_once_and_records(preload):
    assert run(preload, "--remove-archives").returncode == 0
    record = preload["dir"] / "loaded" / "busybox-0123.tar.done"
    assert f"image_id={IMAGE_ID}" in record.read_text()
    assert not preload["archive"].exists()
    assert len(loads(preload)) == 1
    assert run(preload, "--remove-archives").returncode == 0
    assert len(loads(preload)) == 1


def test_keeps_archive_without_flag(preload):
    assert run(preload).returncode == 0
    assert preload["archive"].exists()


def test_corrupt_archive_not_loaded(preload):
    preload["archive"].write_bytes(b"tampered")
    proc = run(preload)
    assert proc.returncode == 1
    assert "does not match its sha256" in proc.stderr
    assert loads(preload) == []
    assert not (preload["dir"] / "loaded" / "busybox-0123.tar.done").exists()


def test_wrong_image_id_not_recorded(preload):
    preload["env"]["FAKE_ID"] = "sha256:" + "00" * 32
    proc = run(preload, "--remove-archives")
    assert proc.returncode == 1
    assert "is not the expected" in proc.stderr
    assert not (preload["dir"] / "loaded" / "busybox-0123.tar.done").exists()
    assert preload["archive"].exists()


def test_no_manifest_is_fine(tmp_path):
    env = dict(os.environ, PIBAKE_PRELOAD_DIR=str(tmp_path))
    proc = subprocess.run(["sh", SCRIPT], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0
