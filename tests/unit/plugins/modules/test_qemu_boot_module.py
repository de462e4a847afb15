# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The qemu_boot module: documentation matches argument_spec, check mode changes nothing, failures are one
sentence of JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from ansible_collections.pibake.image.plugins.modules import qemu_boot

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def test_argument_spec_matches_documentation(monkeypatch):
    captured = {}

    class Fake:
        def __init__(self, argument_spec, supports_check_mode, **kwargs):
            captured.update(spec=argument_spec, check=supports_check_mode)
            raise SystemExit(0)

    monkeypatch.setattr(qemu_boot, "AnsibleModule", Fake)
    with pytest.raises(SystemExit):
        qemu_boot.main()
    doc = yaml.safe_load(qemu_boot.DOCUMENTATION)
    assert doc["module"] == "qemu_boot"
    assert set(doc["options"]) == set(captured["spec"])
    for option, described in doc["options"].items():
        actual = captured["spec"][option]
        assert described["type"] == actual["type"], option
        assert described.get("default") == actual.get("default"), option
        assert described.get("choices") == actual.get("choices"), option
        assert described.get("description"), option
    assert captured["check"] is True
    assert yaml.safe_load(qemu_boot.EXAMPLES) and yaml.safe_load(qemu_boot.RETURN)


def _run(args, tmp_path, check_mode=False):
    payload = {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode)}
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(payload))
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, ".ansible", "collections"),
               PIBAKE_VM_DIR=str(tmp_path / "vms"))
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.pibake.image.plugins.modules.qemu_boot",
                           str(args_file)], capture_output=True, env=env, timeout=120, check=False)
    return json.loads(proc.stdout)


def test_check_mode_boots_nothing(tmp_path):
    image = tmp_path / "os.img"
    image.write_bytes(b"")
    result = _run({"image": str(image), "work_dir": str(tmp_path / "work")}, tmp_path, check_mode=True)
    assert result["changed"] is True and "would boot" in result["msg"]
    assert not (tmp_path / "work").exists()


def test_a_missing_image_fails_with_one_sentence(tmp_path):
    result = _run({"image": str(tmp_path / "nope.img.xz"), "work_dir": str(tmp_path / "work")}, tmp_path)
    assert result["failed"] and "does not exist" in result["msg"] and "Traceback" not in result["msg"]


def test_stopping_a_machine_that_is_gone_changes_nothing(tmp_path):
    result = _run({"state": "absent", "vm": str(tmp_path / "vms" / "gone.json")}, tmp_path)
    assert result["changed"] is False and not result.get("failed")
