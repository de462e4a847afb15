# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The base_image module: docs match argument_spec, stdout is pure JSON, failures are one sentence."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
import yaml

from ansible_collections.pibake.image.plugins.modules import base_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
MODULE = os.path.join(REPO, "plugins", "modules", "base_image.py")


_DISK = None


def _disk() -> bytes:
    """A small image with the Raspberry Pi OS layout (FAT partition 1, ext4 partition 2), which the module accepts."""
    global _DISK
    if _DISK is None:
        import tempfile

        from ansible_collections.pibake.image.plugins.module_utils import _debian_base

        with tempfile.TemporaryDirectory() as work:
            root, boot = os.path.join(work, "root"), os.path.join(work, "boot")
            os.makedirs(os.path.join(root, "etc"))
            os.makedirs(boot)
            with open(os.path.join(root, "etc", "hostname"), "w") as handle:
                handle.write("box\n")
            with open(os.path.join(boot, "cmdline.txt"), "w") as handle:
                handle.write("root=PARTUUID=0a1b2c3d-02\n")
            ids = _debian_base.Identifiers("0a1b2c3d", "1234abcd", "2f0b7a1e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                                           "3a0b7a1e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
            image = os.path.join(work, "disk.img")
            _debian_base.assemble_image(root, boot, image, ids, boot_size_mib=64, root_free_mib=8)
            with open(image, "rb") as handle:
                _DISK = handle.read()
    return _DISK


def run_module(args: dict, tmp_path) -> subprocess.CompletedProcess:
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, ".ansible", "collections"))
    return subprocess.run([sys.executable, MODULE, str(args_file)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_argument_spec_matches_documentation(monkeypatch):
    captured = {}

    class Fake:
        def __init__(self, argument_spec, supports_check_mode):
            captured["spec"] = argument_spec
            captured["check"] = supports_check_mode
            raise SystemExit(0)

    monkeypatch.setattr(base_image, "AnsibleModule", Fake)
    with pytest.raises(SystemExit):
        base_image.main()
    doc = yaml.safe_load(base_image.DOCUMENTATION)["options"]
    spec = captured["spec"]
    assert set(doc) == set(spec)
    for name, option in doc.items():
        assert option["type"] == spec[name]["type"], name
        assert option.get("default") == spec[name].get("default"), name
        assert option.get("required", False) == spec[name].get("required", False), name
    assert captured["check"] is True
    yaml.safe_load(base_image.EXAMPLES)
    assert set(yaml.safe_load(base_image.RETURN)) >= {"path", "sha256", "source", "release", "built"}


def test_stdout_is_pure_json_while_progress_goes_to_stderr(tmp_path):
    src = tmp_path / "base.img"
    src.write_bytes(_disk())
    proc = run_module({"source": {"type": "path", "path": str(src)}, "cache_dir": str(tmp_path / "cache")}, tmp_path)
    result = json.loads(proc.stdout)  # nothing but the JSON result on stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert result["changed"] is True and result["built"] is True
    assert result["sha256"] == hashlib.sha256(_disk()).hexdigest()
    assert "[pibake" in proc.stderr and "step unpack" in proc.stderr
    again = json.loads(run_module({"source": {"type": "path", "path": str(src)},
                                   "cache_dir": str(tmp_path / "cache")}, tmp_path).stdout)
    assert again["changed"] is False and again["path"] == result["path"]


def test_progress_file(tmp_path):
    src = tmp_path / "base.img"
    src.write_bytes(_disk())
    log = tmp_path / "logs" / "progress.log"
    proc = run_module({"source": {"type": "path", "path": str(src)}, "cache_dir": str(tmp_path / "cache"),
                       "progress_file": str(log)}, tmp_path)
    json.loads(proc.stdout)
    assert "step unpack: done" in log.read_text()
    assert "[pibake" not in proc.stderr


def test_failure_is_one_sentence(tmp_path):
    proc = run_module({"source": {"type": "tarball"}, "cache_dir": str(tmp_path / "cache")}, tmp_path)
    result = json.loads(proc.stdout)
    assert result["failed"] is True
    assert result["msg"] == "pibake_base_image.type 'tarball' is unknown; use one of url, path, debian."


def test_check_mode_builds_nothing(tmp_path):
    proc = run_module({"source": {"type": "debian"}, "cache_dir": str(tmp_path / "cache"), "_ansible_check_mode": True},
                      tmp_path)
    result = json.loads(proc.stdout)
    assert result["changed"] is True and result["built"] is False and result["release"] == "trixie"
    assert not (tmp_path / "cache").exists()


def test_ansible_doc_renders():
    proc = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-doc"), "-t", "module",
                           "pibake.image.base_image"], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "cache_dir" in proc.stdout and "progress_file" in proc.stdout
