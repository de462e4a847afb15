# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
import os

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _outputs
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def test_publish_moves_whole_files_and_scrubs_the_log(tmp_path):
    work, deploy = tmp_path / "work", tmp_path / "deploy"
    work.mkdir()
    (work / "image.img").write_bytes(b"\0" * (2 << 20) + b"data")
    (work / "os.info").write_text('NAME="x"\n')
    log = work / "run.log"
    log.write_text("ok: [localhost]\nregistry password=hunter2 used\n")
    written = _outputs.publish(str(deploy), [{"src": str(work / "image.img"), "name": "x.img"},
                                             {"src": str(work / "os.info"), "name": "os.info"}], str(log))
    assert sorted(os.path.basename(p) for p in written) == ["build.log", "os.info", "x.img"]
    assert (deploy / "x.img").read_bytes().endswith(b"data")
    assert "hunter2" not in (deploy / "build.log").read_text()
    assert not [n for n in os.listdir(deploy) if n.startswith(".")]


def test_a_missing_output_publishes_nothing(tmp_path):
    deploy = tmp_path / "deploy"
    with pytest.raises(PibakeError, match="was not produced"):
        _outputs.publish(str(deploy), [{"src": str(tmp_path / "nope.img"), "name": "x.img"}], None)
    assert os.listdir(deploy) == []


def test_partials_of_a_killed_publish_are_removed(tmp_path):
    (tmp_path / ".x.img.partial-123").write_text("half")
    (tmp_path / "x.img").write_text("whole")
    assert _outputs.remove_partials(str(tmp_path)) == [".x.img.partial-123"]
    assert os.listdir(tmp_path) == ["x.img"]


def test_a_failure_while_staging_leaves_the_previous_release_whole(tmp_path, monkeypatch):
    deploy, work = tmp_path / "deploy", tmp_path / "work"
    deploy.mkdir()
    work.mkdir()
    (deploy / "x.img.xz").write_text("old image")
    (deploy / "x.img.xz.sha256").write_text("old sum")
    (work / "x.img.xz").write_text("new image")
    (work / "x.img.xz.sha256").write_text("new sum")
    real_stage = _outputs._stage

    def stage_then_fail(src, dest, move):
        if dest.endswith(".sha256"):
            raise PibakeError("disk full")
        return real_stage(src, dest, move)

    monkeypatch.setattr(_outputs, "_stage", stage_then_fail)
    with pytest.raises(PibakeError):
        _outputs.publish(str(deploy), [{"src": str(work / "x.img.xz"), "name": "x.img.xz"},
                                       {"src": str(work / "x.img.xz.sha256"), "name": "x.img.xz.sha256"}], None)
    assert (deploy / "x.img.xz").read_text() == "old image"
    assert sorted(os.listdir(deploy)) == ["x.img.xz", "x.img.xz.sha256"]


def test_signals_are_held_during_the_renames_and_delivered_after(tmp_path, monkeypatch):
    import signal

    received = []
    previous = signal.signal(signal.SIGTERM, lambda *_: received.append("TERM"))
    real_replace = os.replace

    def replace_and_signal(src, dst):
        os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-rename: must wait until every file is in place
        assert received == []
        real_replace(src, dst)

    try:
        work = tmp_path / "work"
        work.mkdir()
        for name in ("a", "b"):
            (work / name).write_text(name)
        monkeypatch.setattr(_outputs.os, "replace", replace_and_signal)
        _outputs.publish(str(tmp_path / "deploy"), [{"src": str(work / n), "name": n} for n in ("a", "b")], None)
    finally:
        monkeypatch.undo()
        signal.signal(signal.SIGTERM, previous)
    assert received == ["TERM"]
    assert sorted(os.listdir(tmp_path / "deploy")) == ["a", "b"]
