# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The guard process, with `sleep` standing in for qemu: launch, stop, destroy, and teardown when the owner dies."""

import os
import subprocess
import time

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _qemu_guard as qg
from ansible_collections.pibake.image.plugins.module_utils._lease import process_start_time


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def _running(pid):
    return qg.alive(pid, process_start_time(pid))


@pytest.fixture()
def machine(tmp_path, monkeypatch):
    """A machine record owned by a `sleep` process the test can kill, with its guard running."""
    monkeypatch.setenv("PIBAKE_VM_DIR", str(tmp_path / "vms"))
    owner = subprocess.Popen(["sleep", "300"])
    work = tmp_path / f"{qg.WORK_PREFIX}test"
    work.mkdir()
    (work / "system.img").write_bytes(b"disk")
    record = qg.new_record(owner.pid, str(work))
    record.update(prep_pid=0, prep_start=None)
    path = qg.save_record(record)
    guard = qg.start_guard(path)
    record.update(guard_pid=guard, guard_start=process_start_time(guard))
    qg.write_json(path, record)
    yield {"owner": owner, "work": work, "path": path, "guard": guard, "record": record}
    owner.kill()
    owner.wait()
    _wait(lambda: not _running(guard))
    qg.reap(path)


def _request(machine, seq, action, **fields):
    qg.write_json(os.path.join(machine["work"], "request.json"), {"seq": seq, "action": action, **fields})
    status_path = os.path.join(machine["work"], "status.json")
    assert _wait(lambda: int((qg.read_json(status_path) or {}).get("seq") or 0) >= seq), "the guard did not answer"
    return qg.read_json(status_path)


def test_the_guard_launches_stops_and_relaunches(machine):
    status = _request(machine, 1, "launch", argv=["sleep", "300"])
    assert status["running"] and _running(status["qemu_pid"])
    first = status["qemu_pid"]
    status = _request(machine, 2, "stop", timeout=0.5)
    assert not status["running"] and status.get("forced_stop") and not _running(first)
    status = _request(machine, 3, "launch", argv=["sleep", "300"])
    assert status["running"] and status["launches"] == 2


def test_a_child_that_exits_by_itself_is_noticed(machine):
    _request(machine, 1, "launch", argv=["sh", "-c", "exit 7"])
    status_path = os.path.join(machine["work"], "status.json")
    assert _wait(lambda: (qg.read_json(status_path) or {}).get("exit_code") == 7)
    assert not qg.read_json(status_path)["running"]


def test_destroy_removes_the_folder_and_the_record(machine):
    status = _request(machine, 1, "launch", argv=["sleep", "300"])
    qg.write_json(os.path.join(machine["work"], "request.json"), {"seq": 2, "action": "destroy", "timeout": 0})
    assert _wait(lambda: not os.path.exists(machine["work"]) and not os.path.exists(machine["path"]))
    assert not _running(status["qemu_pid"])
    assert _wait(lambda: not _running(machine["guard"]))


def test_when_the_owner_is_killed_the_guard_removes_everything(machine):
    status = _request(machine, 1, "launch", argv=["sleep", "300"])
    machine["owner"].kill()  # kill -9; not reaped yet: a zombie owner counts as gone
    assert _wait(lambda: not os.path.exists(machine["work"]), timeout=5)
    assert not os.path.exists(machine["path"])
    assert not _running(status["qemu_pid"])
    assert _wait(lambda: not _running(machine["guard"]))


def test_a_launch_for_a_dead_owner_never_starts(machine, tmp_path):
    machine["owner"].kill()
    machine["owner"].wait()
    marker = tmp_path / "started"
    qg.write_json(os.path.join(machine["work"], "request.json"),
                  {"seq": 1, "action": "launch", "argv": ["touch", str(marker)]})
    assert _wait(lambda: not os.path.exists(machine["work"]))
    time.sleep(0.5)
    assert not marker.exists()


def test_killing_the_guard_takes_qemu_with_it(machine):
    status = _request(machine, 1, "launch", argv=["sleep", "300"])
    os.kill(machine["guard"], 9)
    assert _wait(lambda: not _running(status["qemu_pid"]), timeout=5)
    # the folder stays until the next reap, which finds the owner alive: nothing to reap yet
    assert qg.reap_stale() == []
    machine["owner"].kill()
    machine["owner"].wait()
    assert qg.reap_stale() == [machine["record"]["id"]]
    assert not os.path.exists(machine["work"])


def test_reap_only_deletes_pibake_boot_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("PIBAKE_VM_DIR", str(tmp_path / "vms"))
    other = tmp_path / "precious"
    other.mkdir()
    record = qg.new_record(os.getpid(), str(other))
    path = qg.save_record(record)
    assert qg.reap(path)
    assert other.exists() and not os.path.exists(path)


def test_qmp_talks_the_protocol(tmp_path):
    import json
    import socket
    import threading

    sock_path = str(tmp_path / "qmp.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(sock_path)
    server.listen(1)
    seen = []

    def serve():
        conn, dummy_addr = server.accept()
        stream = conn.makefile("rwb")
        stream.write(b'{"QMP": {"version": {}}}\r\n')
        stream.flush()
        for dummy in range(2):
            seen.append(json.loads(stream.readline())["execute"])
            stream.write(b'{"event": "POWERDOWN"}\r\n{"return": {}}\r\n')
            stream.flush()
        conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    assert qg.qmp(sock_path, "system_powerdown") == {"return": {}}
    thread.join()
    server.close()
    assert seen == ["qmp_capabilities", "system_powerdown"]
