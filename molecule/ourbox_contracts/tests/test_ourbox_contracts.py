# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Molecule verify for pibake.image.ourbox_contracts: exact files, the guard, and the contract check suite."""

from __future__ import annotations

import os
import subprocess
import sys

from ansible_collections.pibake.image.plugins.module_utils import _mountpoint_guard as mg
from ansible_collections.pibake.image.plugins.module_utils._release_info import render

REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
INFO = {
    "name": "ourbox-mini",
    "sku": "TOO-OBX-MINI-BASE-001",
    "variant": "dev",
    "version": "1.2.3",
    "build_time": "2026-01-02T03:04:05Z",
    "git_revision": "0123456789abcdef0123456789abcdef01234567",
    "base_image": 'debian trixie arm64 (pibake recipe 1a2b3c4d) "quoted" $not_expanded',
    "base_image_sha256": "aaaabbbbccccddddeeeeffff00001111aaaabbbbccccddddeeeeffff00001111",
    "pibake_version": "0.1.0",
}
FSTAB_LINE = "LABEL=OURBOX_DATA /var/lib/ourbox ext4 defaults,nofail,x-systemd.device-timeout=30s 0 2"


def test_release_file_is_exactly_the_rendered_dict(host):
    assert host.file("/etc/ourbox/release").content_string == render(INFO, prefix="OURBOX_")


def test_release_file_sources_the_tricky_value(host):
    out = host.check_output("sh -c %s", '. /etc/ourbox/release; printf %s "$OURBOX_BASE_IMAGE"')
    assert out == INFO["base_image"]


def test_fstab_line_is_exact_and_single(host):
    lines = host.file("/etc/fstab").content_string.splitlines()
    assert lines.count(FSTAB_LINE) == 1
    assert sum("/var/lib/ourbox" in line for line in lines) == 1


def test_mountpoint_is_guarded(host):
    d = host.file("/var/lib/ourbox")
    assert d.is_directory and d.mode == 0 and d.user == "root"
    root = host.backend.name
    assert mg.get_flags(os.path.join(root, "var/lib/ourbox")) & mg.FS_IMMUTABLE_FL
    assert host.run("touch /var/lib/ourbox/x").rc != 0
    assert host.run("mkdir /var/lib/ourbox/sub").rc != 0


def test_services_get_requires_mounts_for(host):
    for unit in ("docker.service", "k3s.service"):
        f = host.file(f"/etc/systemd/system/{unit}.d/50-ourbox-data.conf")
        assert f.mode == 0o644
        assert "RequiresMountsFor=/var/lib/ourbox" in f.content_string.splitlines()


def test_fstrim_timer_enabled(host):
    assert host.file("/etc/systemd/system/timers.target.wants/fstrim.timer").is_symlink


def test_contract_suite_passes_on_the_result(host, tmp_path):
    """tests/contracts (the check users run on images and devices) accepts what the role produced."""
    os_info = tmp_path / "os.info"
    os_info.write_text(render(INFO, prefix=""))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.join(REPO, "tests", "contracts"),
         "--connection=chroot", f"--hosts={host.backend.name}", f"--os-info={os_info}", "--device-timeout=30",
         "-k", "not TestSealedImage and not TestBootedDevice"],
        cwd=REPO, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "failed" not in proc.stdout
