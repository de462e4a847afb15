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
