# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The customize phase's snapshot cache (issue #9) end to end on the tiny arm64 image.

Three tiny roles (tests/integration/roles/pibake_test_snap_{a,b,c}) write files, a symlink, templated variables
and a file on the staged FAT boot partition. The manifest of a built image lists every path of its root and boot
filesystems with mode, owner, SHA-256 of regular files and symlink targets. Nothing is left out of it: neither the
mini image nor these roles write anything that differs per build (no release info, no logs, no timestamps in
content); mtimes are not compared.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _loop, _mounts, _snapshots
from ansible_collections.pibake.image.plugins.module_utils._partitions import read_table
from tests.support import mini_image

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_ROLES = os.path.join(REPO, "tests", "integration", "roles")
ROLES = ["pibake_test_snap_a", "pibake_test_snap_b", "pibake_test_snap_c"]
IMAGE = "cubeos-1.2.3-dev.img"


def build(tmp_path, tag, cache, roles_dir, *extra, roles=ROLES, background=False):
    """Build the raw image (no finalize) into tmp_path/deploy-<tag>; returns the process result and the build log."""
    base = mini_image.cached(str(tmp_path / "base.img")) if not (tmp_path / "base.img").exists() else str(tmp_path / "base.img")
    log = tmp_path / f"build-{tag}.log"
    env = dict(
        os.environ,
        PIBAKE_LEASE_DIR=str(tmp_path / "leases"),
        ANSIBLE_ROLES_PATH=f"{roles_dir}:{TEST_ROLES}",
        PIBAKE_CACHE_DIR=str(cache),
        PIBAKE_BUILD_LOG=str(log),
    )
    argv = [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "playbooks/build-image.yml", "-i", "inventories/cubeos",
            "-e", "variant=dev", "-e", "version=1.2.3",
            "-e", json.dumps({"pibake_base_image": {"type": "path", "path": base}, "pibake_roles": roles}),
            "-e", f"pibake_work_dir={tmp_path / 'work'}", "-e", f"pibake_deploy_dir={tmp_path / f'deploy-{tag}'}",
            "-e", "pibake_grow=16M", "-e", "pibake_finalize=false", *extra]
    if background:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), log
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    return result, log.read_text()


def plan_line(log):
    return next(line for line in log.splitlines() if "Snapshot cache:" in line)


def ran(log):
    """The test roles that ran, from the build log's task lines."""
    return [role for role in ROLES if f"TASK [{role} : " in log]


def walk(top, owners=True):
    entries = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            entry = {"mode": oct(info.st_mode)}
            if owners:
                entry.update(uid=info.st_uid, gid=info.st_gid)
            if os.path.islink(path):
                entry["target"] = os.readlink(path)
            elif os.path.isfile(path):
                with open(path, "rb") as handle:
                    entry["sha256"] = hashlib.sha256(handle.read()).hexdigest()
            entries[os.path.relpath(path, top)] = entry
    return entries


def manifest(image, scratch):
    """Every file of the image's root (read-only mount) and boot partition (copied out with mtools)."""
    table = read_table(str(image))
    boot, root = table.get(1), table.get(2)
    mnt, stage = scratch / "manifest-root", scratch / "manifest-boot"
    mnt.mkdir()
    stage.mkdir()
    device = _loop.attach(str(image), root.offset, root.length)
    try:
        _mounts.mount(device, str(mnt), fstype="ext4", options=("ro", "noload"))
        try:
            files = walk(str(mnt))
        finally:
            _mounts.unmount(str(mnt))
    finally:
        _loop.detach(device)
    subprocess.run(["mcopy", "-s", "-n", "-i", f"{image}@@{boot.offset}", "::/*", str(stage) + "/"], check=True,
                   env=dict(os.environ, MTOOLS_SKIP_CHECK="1"))
    # FAT has no owners or modes worth comparing: paths and contents only.
    boot_files = {path: entry.get("sha256", "dir") for path, entry in walk(str(stage), owners=False).items()}
    shutil.rmtree(mnt.parent / "manifest-root")
    shutil.rmtree(stage)
    return {"root": files, "boot": boot_files}


def copy_tree(source, dest):
    subprocess.run(["cp", "-a", "--sparse=always", str(source), str(dest)], check=True)


def assert_nothing_left(tmp_path):
    assert [d for d in _loop.list_loops() if d["back-file"].startswith(str(tmp_path))] == []
    assert _mounts.mounts_below(str(tmp_path)) == []


@pytest.fixture(scope="module")
def cold(tmp_path_factory):
    """A cold build of the three roles with an empty cache: its cache, roles copy and manifest."""
    tmp_path = tmp_path_factory.mktemp("snapcold")
    roles_dir = tmp_path / "roles"
    roles_dir.mkdir()
    for role in ROLES:
        shutil.copytree(os.path.join(TEST_ROLES, role), roles_dir / role)
    _, log = build(tmp_path, "cold", tmp_path / "cache", roles_dir)
    assert ran(log) == ROLES and "no role restored" in plan_line(log)
    return {"tmp": tmp_path, "roles": roles_dir, "cache": tmp_path / "cache",
            "manifest": manifest(tmp_path / "deploy-cold" / IMAGE, tmp_path)}


def cache_copy(cold, tmp_path):
    copy_tree(cold["cache"], tmp_path / "cache")
    return tmp_path / "cache"


def records(cache):
    return _snapshots.Store(str(cache)).entries()


def test_cold_build_saves_a_snapshot_per_role(cold):
    assert sorted(record["role"] for record in records(cold["cache"])) == sorted(ROLES)
    manifest_root = cold["manifest"]["root"]
    assert manifest_root["etc/pibake-snap/a"]["mode"] == oct(0o100600)
    assert manifest_root["etc/pibake-snap/a-link"]["target"] == "a"
    assert "pibake-snap-b.txt" in cold["manifest"]["boot"]
    assert not os.path.exists(cold["tmp"] / "work") or os.listdir(cold["tmp"] / "work") == []


def test_a_rebuild_with_nothing_changed_runs_no_role_and_gives_the_same_image(cold, tmp_path):
    cache = cache_copy(cold, tmp_path)
    _, log = build(tmp_path, "again", cache, cold["roles"])
    assert ran(log) == [] and "roles to run: none" in plan_line(log)
    assert "restored from the cache: " + ", ".join(ROLES) in plan_line(log)
    assert manifest(tmp_path / "deploy-again" / IMAGE, tmp_path) == cold["manifest"]
    # A snapshot is grown already: restoring it must not grow the image again.
    assert os.path.getsize(tmp_path / "deploy-again" / IMAGE) == os.path.getsize(cold["tmp"] / "deploy-cold" / IMAGE)
    assert_nothing_left(tmp_path)


def test_a_changed_variable_reruns_its_role_and_the_later_ones_like_a_cold_build(cold, tmp_path):
    cache = cache_copy(cold, tmp_path)
    changed = ("-e", "pibake_test_snap_b_text=changed")
    _, log = build(tmp_path, "warm", cache, cold["roles"], *changed)
    assert ran(log) == ROLES[1:] and "restored from the cache: pibake_test_snap_a " in plan_line(log)
    warm = manifest(tmp_path / "deploy-warm" / IMAGE, tmp_path)
    assert warm != cold["manifest"]
    _, log = build(tmp_path, "nocache", tmp_path / "unused-cache", cold["roles"], *changed, "-e", "pibake_cache=off")
    assert ran(log) == ROLES and "pibake_cache=off" in plan_line(log)
    assert not (tmp_path / "unused-cache" / "snapshots").exists() or records(tmp_path / "unused-cache") == []
    assert manifest(tmp_path / "deploy-nocache" / IMAGE, tmp_path) == warm
    assert len(records(cache)) == 5  # the two new ones next to the three of the cold build


def test_a_change_to_the_last_roles_files_reruns_only_it(cold, tmp_path):
    cache = cache_copy(cold, tmp_path)
    roles_dir = tmp_path / "roles"
    copy_tree(cold["roles"], roles_dir)
    tasks = roles_dir / "pibake_test_snap_c" / "tasks" / "main.yml"
    tasks.write_text(tasks.read_text().replace("# The snapshot tests edit", "# The snapshot tests (edited) edit"))
    _, log = build(tmp_path, "files", cache, roles_dir)
    assert ran(log) == ["pibake_test_snap_c"]
    assert "restored from the cache: pibake_test_snap_a, pibake_test_snap_b " in plan_line(log)
    assert manifest(tmp_path / "deploy-files" / IMAGE, tmp_path) == cold["manifest"]


def test_a_failed_or_killed_role_leaves_no_snapshot(cold, tmp_path):
    cache = cache_copy(cold, tmp_path)
    before = {record["key"] for record in records(cache)}
    failing = build(tmp_path, "fail", cache, cold["roles"], roles=ROLES[:2] + ["pibake_test_fail"], background=True)[0]
    assert failing.wait(timeout=300) != 0
    assert {record["key"] for record in records(cache)} == before
    # Killed while the role runs (an emulated sleep in the chroot): the lease guard tears the session down.
    busy, log = build(tmp_path, "kill", cache, cold["roles"], "-e", "pibake_test_busy_seconds=120",
                      roles=ROLES[:1] + ["pibake_test_busy"], background=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and "Keep an emulated process busy" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.5)
    time.sleep(2)
    busy.send_signal(signal.SIGKILL)
    busy.wait(timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (_mounts.mounts_below(str(tmp_path)) or os.path.exists(tmp_path / "work")
                                           and os.listdir(tmp_path / "work")):
        time.sleep(1)
    assert {record["key"] for record in records(cache)} == before
    assert not [name for name in os.listdir(cache / "snapshots") if _snapshots.PARTIAL in name]
    assert_nothing_left(tmp_path)


def test_eviction_keeps_the_cache_under_its_limit(cold, tmp_path):
    cache = cache_copy(cold, tmp_path)
    sizes = sorted(int(record["disk_bytes"]) for record in records(cache))
    limit = sum(sizes[-2:]) + 4096  # room for about two snapshots
    _, log = build(tmp_path, "evict", cache, cold["roles"], "-e", "pibake_test_snap_b_text=evict",
                   "-e", f"pibake_cache_max_size={limit}")
    assert ran(log) == ROLES[1:]
    store = _snapshots.Store(str(cache))
    assert store.total_bytes() <= limit
    newest = max(records(cache), key=lambda record: record["last_used"])
    assert newest["role"] == "pibake_test_snap_c" and len(records(cache)) < 5
    assert re.search(r"[1-9][0-9]* evicted", log)
