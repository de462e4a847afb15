# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The finalize modules: documentation matches argument_spec, check mode is declared, and a module run prints
pure JSON with a one-sentence failure."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.support.finalize_images import image_copy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
MODULES = ["image_shrink", "image_free_space", "image_compress", "image_checksum", "image_bmap", "imager_manifest",
           "image_sbom", "board_lint"]


def _spec(module, monkeypatch):
    captured = {}

    class Fake:
        def __init__(self, argument_spec, supports_check_mode, **kwargs):
            captured.update(spec=argument_spec, check=supports_check_mode, kwargs=kwargs)
            raise SystemExit(0)

    monkeypatch.setattr(module, "AnsibleModule", Fake)
    with pytest.raises(SystemExit):
        module.main()
    return captured


@pytest.mark.parametrize("name", MODULES)
def test_argument_spec_matches_documentation(name, monkeypatch):
    module = importlib.import_module(f"ansible_collections.pibake.image.plugins.modules.{name}")
    captured = _spec(module, monkeypatch)
    doc = yaml.safe_load(module.DOCUMENTATION)
    assert doc["module"] == name and doc["short_description"]
    options, spec = doc["options"], captured["spec"]
    assert set(options) == set(spec)
    for option, described in options.items():
        actual = spec[option]
        assert described["type"] == actual["type"], option
        assert described.get("default") == actual.get("default"), option
        assert described.get("required", False) == actual.get("required", False), option
        assert described.get("choices") == actual.get("choices"), option
        assert described.get("elements") == actual.get("elements"), option
        assert described.get("description"), option
    assert captured["check"] is True
    assert yaml.safe_load(module.EXAMPLES)
    assert yaml.safe_load(module.RETURN)


def run_module(name, args, tmp_path):
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, ".ansible", "collections"))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "plugins", "modules", f"{name}.py"), str(args_file)],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    return json.loads(proc.stdout)


def test_board_lint_module_fails_with_one_sentence(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=0, fat_deleted_mb=0,
                     fstab_extra="LABEL=missing /srv ext4 defaults 0 2\n")
    result = run_module("board_lint", {"image": img}, tmp_path)
    assert result["failed"] and result["msg"].startswith("Board lint failed: /etc/fstab mounts LABEL=missing")
    assert result["msg"].count(". ") == 0 and result["msg"].endswith(".")
    report = run_module("board_lint", {"image": img, "fail_on_problems": False}, tmp_path)
    assert not report.get("failed") and report["ok"] is False and len(report["problems"]) == 1


def test_free_space_module_reports_and_logs(tmp_path):
    img = image_copy(tmp_path, data_mb=1, deleted_mb=4, fat_deleted_mb=0)
    log = tmp_path / "finalize.log"
    result = run_module("image_free_space", {"image": img, "log_file": str(log)}, tmp_path)
    assert result["changed"] and result["allocated_after"] < result["allocated_before"]
    assert "free space: partition 2 (ext4)" in log.read_text() and len(result["log"]) == 2


def test_checksum_module_missing_file(tmp_path):
    result = run_module("image_checksum", {"path": str(tmp_path / "nope.img.xz")}, tmp_path)
    assert result["failed"] and result["msg"].endswith("does not exist; produce it before writing its checksum.")
