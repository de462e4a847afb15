# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
import os
import subprocess

from ansible_collections.pibake.image.plugins.module_utils import _lease


def test_records_round_trip_and_owner_liveness(tmp_path, monkeypatch):
    monkeypatch.setenv("PIBAKE_LEASE_DIR", str(tmp_path))
    sleeper = subprocess.Popen(["sleep", "30"])
    record = _lease.new_record("image", sleeper.pid, False, root="/x")
    path = _lease.save(record)
    assert _lease.all_leases() == [path]
    assert _lease.load(path)["root"] == "/x"
    assert _lease.owner_alive(record)
    sleeper.kill()
    sleeper.wait()
    assert not _lease.owner_alive(record)
    _lease.remove(record)
    assert _lease.all_leases() == []


def test_a_reused_pid_is_not_the_owner():
    record = {"owner_pid": os.getpid(), "owner_start": "1"}
    assert not _lease.owner_alive(record)


def test_persistent_records_have_no_owner_and_stay_alive():
    record = _lease.new_record("dir", os.getpid(), True)
    assert record["owner_pid"] == 0 and _lease.owner_alive(record)


def test_lock_is_exclusive(tmp_path):
    path = str(tmp_path / "x.json")
    with _lease.locked(path) as first:
        assert first
        child = subprocess.run(
            ["python3", "-c", f"import fcntl,os,sys; fd=os.open('{path}.lock', os.O_RDWR);\n"
             "try:\n fcntl.flock(fd, fcntl.LOCK_EX|fcntl.LOCK_NB); sys.exit(0)\nexcept BlockingIOError: sys.exit(3)"],
            check=False,
        )
        assert child.returncode == 3


def test_owner_is_the_topmost_ansible_process():
    # Under pytest there is no ansible ancestor: the parent owns the session.
    assert _lease.find_owner_pid() == os.getppid()
