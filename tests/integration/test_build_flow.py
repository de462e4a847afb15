# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""playbooks/build-image.yml end to end on the tiny arm64 image: outputs, failures and leaks."""

import os
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _lease, _loop, _mounts
from tests.support import mini_image

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def build(tmp_path, *extra):
    base = mini_image.cached(str(tmp_path / "base.img"))
    env = dict(
        os.environ,
        PIBAKE_LEASE_DIR=str(tmp_path / "leases"),
        ANSIBLE_ROLES_PATH=os.path.join(REPO, "tests", "integration", "roles"),
        PIBAKE_CACHE_DIR=str(tmp_path / "cache"),
    )
    env.pop("PIBAKE_BUILD_LOG", None)
    return subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "playbooks/build-image.yml", "-i", "inventories/cubeos",
         "-e", "variant=dev", "-e", "version=1.2.3",
         "-e", '{"pibake_base_image": {"type": "path", "path": "%s"}}' % base,
         "-e", f"pibake_work_dir={tmp_path / 'work'}", "-e", f"pibake_deploy_dir={tmp_path / 'deploy'}",
         "-e", "pibake_grow=16M", "-e", "pibake_cache=off", *extra],
        cwd=REPO, env=env, capture_output=True, text=True,
    )


def assert_nothing_left(tmp_path):
    assert [d for d in _loop.list_loops() if d["back-file"].startswith(str(tmp_path))] == []
    assert _mounts.mounts_below(str(tmp_path)) == []
    leases = tmp_path / "leases"
    assert not leases.exists() or not [n for n in os.listdir(leases) if n.endswith(".json")]
    assert not (tmp_path / "work").exists() or os.listdir(tmp_path / "work") == []


FAST_FINALIZE = ("-e", "finalize_compression=zstd", "-e", "finalize_compression_level=3",
                 "-e", "finalize_expansion=none", "-e", "finalize_margin_mib=4")


def root_marker(image, tmp_path):
    root_offset = (mini_image.BOOT_START + mini_image.BOOT_SIZE) * 512
    part = tmp_path / "root.ext4"
    subprocess.run(["dd", f"if={image}", f"of={part}", "bs=1M", f"skip={root_offset}", "iflag=skip_bytes",
                    "conv=sparse", "status=none"], check=True)
    marker = subprocess.run(["debugfs", "-R", "cat /etc/pibake-test-marker", str(part)], capture_output=True, text=True)
    return marker.stdout.strip()


def test_a_build_finalizes_into_a_verified_release(tmp_path):
    # pibake_test_busy also lays down the kernel and device trees the board lint looks for.
    result = build(tmp_path, "-e", '{"pibake_roles": ["pibake_test_marker", "pibake_test_busy"]}',
                   "-e", "pibake_test_busy_seconds=0", "-e", "pibake_deploy_raw_image=true", *FAST_FINALIZE)
    assert result.returncode == 0, result.stdout[-3000:]
    deploy = tmp_path / "deploy"
    name = "cubeos-1.2.3-dev"
    assert sorted(os.listdir(deploy)) == sorted([
        "build.log", "os.info", "rpi-imager.json", "os_list_local.json", f"{name}.bmap", f"{name}.cdx.json",
        f"{name}.img", f"{name}.img.sha256", f"{name}.img.zst", f"{name}.img.zst.sha256"])
    for sums in (f"{name}.img.sha256", f"{name}.img.zst.sha256"):
        subprocess.run(["sha256sum", "-c", "--strict", sums], cwd=deploy, check=True, capture_output=True)
    info = (deploy / "os.info").read_text()
    assert 'VERSION="1.2.3"' in info and 'VARIANT="dev"' in info and "BASE_IMAGE_SHA256=" in info
    assert f'IMAGE="{name}.img.zst"' in info
    log = (deploy / "build.log").read_text()
    assert "pibake_test_marker : Leave a marker" in log and "Compress the image" in log
    assert f"file://{deploy}/{name}.img.zst" in (deploy / "os_list_local.json").read_text()
    assert_nothing_left(tmp_path)
    assert root_marker(deploy / f"{name}.img", tmp_path) == "built"


def test_without_finalize_the_raw_image_is_published(tmp_path):
    result = build(tmp_path, "-e", '{"pibake_roles": ["pibake_test_marker"]}', "-e", "pibake_finalize=false")
    assert result.returncode == 0, result.stdout[-3000:]
    deploy = tmp_path / "deploy"
    assert sorted(os.listdir(deploy)) == ["build.log", "cubeos-1.2.3-dev.img", "os.info"]
    assert "pibake_test_marker : Leave a marker" in (deploy / "build.log").read_text()
    assert_nothing_left(tmp_path)
    assert root_marker(deploy / "cubeos-1.2.3-dev.img", tmp_path) == "built"


def test_a_failing_role_adds_nothing_to_deploy_and_leaks_nothing(tmp_path):
    result = build(tmp_path, "-e", '{"pibake_roles": ["pibake_test_marker", "pibake_test_fail"]}')
    assert result.returncode != 0
    assert "Customization failed in task 'fail on purpose" in result.stdout.lower() or "Customization failed" in result.stdout
    assert not (tmp_path / "deploy").exists() or os.listdir(tmp_path / "deploy") == []
    assert_nothing_left(tmp_path)


def test_an_unknown_variant_stops_before_any_work(tmp_path):
    result = build(tmp_path, "-e", "variant=nightly", "-e", '{"pibake_roles": ["pibake_test_marker"]}')
    assert result.returncode != 0
    assert "Variant 'nightly'" in result.stdout
    assert not (tmp_path / "work").exists()
