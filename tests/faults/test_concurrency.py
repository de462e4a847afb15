# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Concurrency: two builds at once share nothing but the cache; clean.yml never touches a running build."""

from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Set

import pytest

from tests.faults import harness
from tests.faults.conftest import needs_root
from tests.support import leaks

pytestmark = [pytest.mark.faults, needs_root]


@pytest.fixture()
def shared(tmp_path, served_base):
    """One cache and one lease folder, as two builds on one machine share them."""
    return harness.FaultEnv(str(tmp_path / "run"), served_base["url"], served_base["sha256"], "", "",
                            served_base["path"])


def lease_records(env: harness.FaultEnv) -> Dict[str, dict]:
    records = {}
    for name in env.leases():
        try:
            with open(env.path("leases", name), encoding="utf-8") as handle:
                records[name] = json.load(handle)
        except (OSError, ValueError):
            pass  # replaced while being read
    return records


def build_argv(env: harness.FaultEnv, name: str, busy: int) -> List[str]:
    return env.build_argv("-e", f"pibake_work_dir={env.path(name, 'work')}", "-e",
                          f"pibake_deploy_dir={env.path(name, 'deploy')}", "-e", f"pibake_test_busy_seconds={busy}",
                          "-e", "pibake_deploy_raw_image=true")


def test_two_builds_at_once_share_no_loop_device_or_mount(shared):
    baseline = leaks.Baseline(shared.root)
    started = [shared.start("build", build_argv(shared, name, busy=6)) for name in ("one", "two")]
    overlap = False
    devices: Dict[str, Set[str]] = {}
    mounts: Dict[str, Set[str]] = {}
    while any(proc.poll() is None for _run, proc in started):
        records = lease_records(shared)
        attached = {name: rec for name, rec in records.items() if rec.get("state") == "attached"}
        for name, rec in attached.items():
            devices.setdefault(name, set()).update(str(loop["device"]) for loop in rec["loops"] if loop.get("device"))
            mounts.setdefault(name, set()).update(rec["mounts"])
        if len(attached) == 2:
            overlap = True
            first, second = attached.values()
            live = {loop["name"]: loop["back-file"] for loop in leaks.loops()}
            for rec in (first, second):  # each recorded device really is this build's image
                for loop in rec["loops"]:
                    assert live.get(loop["device"]) in (None, rec["image"]), (loop, live.get(loop["device"]))
        time.sleep(0.2)
    for run, proc in started:
        assert proc.returncode == 0, f"build {run.index} failed:\n{run.output()[-4000:]}"
    assert overlap, "the two builds were never attached at the same time (make the role sleep longer)"
    first, second = devices.values()
    assert first and second and not first & second, f"shared loop devices: {devices}"
    first, second = mounts.values()
    assert not first & second, f"shared mounts: {mounts}"
    for name in ("one", "two"):
        image = shared.path(name, "deploy", harness.NAME + ".img")
        assert harness.image_problem(image) == ""
    assert shared.leases() == [] and baseline.new_loops() == [] and baseline.new_mounts() == []
    assert leaks.wait_until(lambda: not leaks.processes(folder=shared.root, marker=shared.marker), 30)


def test_clean_yml_during_a_build_leaves_it_alone(shared):
    baseline = leaks.Baseline(shared.root)
    run, proc = shared.start("build", build_argv(shared, "busy", busy=10))
    try:
        assert leaks.wait_until(
            lambda: any(rec.get("state") == "attached" for rec in lease_records(shared).values()) or
            proc.poll() is not None, timeout=600, interval=0.2)
        before = lease_records(shared)
        assert len(before) == 1 and proc.poll() is None, "the build should be attached and running"
        (lease, record), = before.items()
        clean = shared.run("clean", timeout=300)
        assert clean.returncode == 0, clean.output()[-3000:]
        assert "0 stale session(s) reaped" in clean.output()
        assert proc.poll() is None, "the build should still run after clean.yml"
        assert list(lease_records(shared)) == [lease], "clean.yml removed the running build's lease"
        live = {loop["name"]: loop["back-file"] for loop in leaks.loops()}
        for loop in record["loops"]:
            assert live.get(loop["device"]) == record["image"], f"clean.yml detached {loop['device']}"
        assert leaks.mounts_under(record["root"]), "clean.yml unmounted the running build's root"
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, run.output()[-4000:]
    assert harness.image_problem(shared.path("busy", "deploy", harness.NAME + ".img")) == ""
    assert shared.leases() == [] and baseline.new_loops() == [] and baseline.new_mounts() == []
