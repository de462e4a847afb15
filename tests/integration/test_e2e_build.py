# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The default image built end to end from the Debian arm64 base (shared by all e2e tests)."""

import os
import re
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _expand, _imagefile, _loop, _mounts
from ansible_collections.pibake.image.plugins.module_utils._partitions import read_table
from tests.support import e2e

pytestmark = pytest.mark.e2e


def test_deploy_holds_image_os_info_and_log(cubeos_build):
    assert cubeos_build.returncode == 0, cubeos_build.stdout[-4000:]
    names = os.listdir(cubeos_build.deploy)
    assert "os.info" in names and "build.log" in names and cubeos_build.image
    info = cubeos_build.os_info
    assert info["VARIANT"] == "dev" and info["VERSION"] == "e2e" and info["SKU"] == "cubeos"
    assert re.fullmatch(r"[0-9a-f]{64}", info["BASE_IMAGE_SHA256"])
    assert info["BASE_IMAGE"].startswith("debian ")


def test_deploy_holds_the_finalized_release(cubeos_build, tmp_path):
    name = os.path.basename(cubeos_build.image)[:-len(".img")]
    deploy = cubeos_build.deploy
    expected = {f"{name}.img.xz", f"{name}.img.xz.sha256", f"{name}.img.sha256", f"{name}.bmap", f"{name}.cdx.json",
                "os.info", "build.log", "rpi-imager.json", "os_list_local.json"}
    assert expected <= set(os.listdir(deploy))
    for sums in (f"{name}.img.xz.sha256", f"{name}.img.sha256"):
        subprocess.run(["sha256sum", "-c", "--strict", sums], cwd=deploy, check=True, capture_output=True)
    subprocess.run(["xz", "-t", f"{name}.img.xz"], cwd=deploy, check=True)
    # bmaptool writes only the mapped blocks; the copy must still be the image, byte for byte.
    copy = tmp_path / "flashed.img"
    subprocess.run(["bmaptool", "-q", "copy", "--bmap", f"{deploy}/{name}.bmap", f"{deploy}/{name}.img.xz", str(copy)],
                   check=True)
    wanted = open(os.path.join(deploy, f"{name}.img.sha256"), encoding="ascii").read().split()[0]
    got = subprocess.run(["sha256sum", str(copy)], check=True, capture_output=True, text=True).stdout.split()[0]
    assert got == wanted
    info = cubeos_build.os_info
    assert info["IMAGE"] == f"{name}.img.xz" and info["ROOT_EXPANSION"] not in ("", "none")


def test_the_shrunk_image_has_its_first_boot_expansion_armed(cubeos_build):
    table = _imagefile.read_table(cubeos_build.image)
    assert _expand.is_armed(table, table.last.offset) == cubeos_build.os_info["ROOT_EXPANSION"]


def test_nothing_of_the_build_stays_attached(cubeos_build):
    assert [d for d in _loop.list_loops() if e2e.OUTPUT in d["back-file"]] == []
    assert _mounts.mounts_below(e2e.OUTPUT) == []


def test_both_filesystems_check_clean(cubeos_build, tmp_path):
    root = e2e.partition_region(cubeos_build.image, 2, str(tmp_path / "root.ext4"))
    subprocess.run(["e2fsck", "-fn", root], check=True, capture_output=True)
    boot = e2e.partition_region(cubeos_build.image, 1, str(tmp_path / "boot.fat"))
    subprocess.run(["fsck.fat", "-n", boot], check=True, capture_output=True)


def test_cmdline_root_matches_the_partition_table(cubeos_root, cubeos_build):
    cmdline = cubeos_root.file("/boot/firmware/cmdline.txt").content_string
    match = re.search(r"root=PARTUUID=(\S+)", cmdline)
    assert match, cmdline
    assert match.group(1) == read_table(cubeos_build.image).partuuid(2)


def test_the_image_carries_no_identity(cubeos_root):
    assert cubeos_root.file("/etc/machine-id").exists
    assert cubeos_root.file("/etc/machine-id").size == 0
    assert cubeos_root.run("ls /etc/ssh/ssh_host_* 2>/dev/null").stdout == ""


def test_the_build_guard_is_gone(cubeos_build, tmp_path):
    # Read the image itself: re-attaching it (cubeos_root) installs a guard of its own for as long as it is attached.
    root = e2e.partition_region(cubeos_build.image, 2, str(tmp_path / "root.ext4"))
    probe = subprocess.run(["debugfs", "-R", "stat /usr/sbin/policy-rc.d", root], capture_output=True, text=True)
    assert "File not found" in probe.stdout + probe.stderr, probe.stdout[:500]


def test_a_second_build_reuses_the_cached_base(cubeos_build, tmp_path):
    log = open(os.path.join(cubeos_build.deploy, "build.log"), encoding="utf-8").read()
    first_base = re.search(r"Resolve the base image\]\n\S+ \S+ (\w+):", log)
    again = e2e.run_build("cubeos", "-e", '{"pibake_roles": ["pibake_test_marker"]}', "-e", "pibake_grow=0",
                          "-e", "pibake_finalize=false", deploy=str(tmp_path / "deploy"))
    assert again.returncode == 0, again.stdout[-3000:]
    second_log = open(os.path.join(again.deploy, "build.log"), encoding="utf-8").read()
    assert re.search(r"Resolve the base image\]\n\S+ \S+ ok:", second_log), "the cached base was rebuilt"
    assert first_base is not None
