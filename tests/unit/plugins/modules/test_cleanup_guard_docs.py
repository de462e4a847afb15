# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""image_cleanup and mountpoint_guard: argument_spec matches DOCUMENTATION exactly, and the modules run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from ansible_collections.pibake.image.plugins.modules import image_cleanup, mountpoint_guard

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


@pytest.mark.parametrize("module", [image_cleanup, mountpoint_guard], ids=lambda m: m.__name__.rsplit(".", 1)[1])
def test_argument_spec_matches_documentation(module):
    options = yaml.safe_load(module.DOCUMENTATION)["options"]
    assert set(options) == set(module.ARGUMENT_SPEC)
    for name, doc in options.items():
        spec = module.ARGUMENT_SPEC[name]
        for key in ("type", "default", "choices", "elements"):
            assert doc.get(key) == spec.get(key), f"{name}.{key}"
        assert bool(doc.get("required")) == bool(spec.get("required")), f"{name}.required"
    yaml.safe_load(module.EXAMPLES)
    yaml.safe_load(module.RETURN)


def _run_module(name, args, check=False):
    """Run a module the way Ansible does (JSON args on stdin), from the checkout."""
    payload = {"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check)}
    env = dict(os.environ, PYTHONPATH=os.path.join(REPO, ".ansible", "collections"))
    proc = subprocess.run([sys.executable, "-m", f"ansible_collections.pibake.image.plugins.modules.{name}"],
                          input=json.dumps(payload), capture_output=True, text=True, env=env, check=False)
    return json.loads(proc.stdout)


def test_image_cleanup_module_reports_freed_bytes(tmp_path):
    (tmp_path / "var/cache/apt").mkdir(parents=True)
    (tmp_path / "var/cache/apt/pkgcache.bin").write_bytes(b"x" * 100000)
    (tmp_path / "etc").mkdir()
    checked = _run_module("image_cleanup", {"root": str(tmp_path)}, check=True)
    assert checked["changed"] and checked["freed_bytes"] >= 100000
    assert (tmp_path / "var/cache/apt/pkgcache.bin").exists()
    done = _run_module("image_cleanup", {"root": str(tmp_path)})
    assert done["changed"] and done["freed_bytes"] == checked["freed_bytes"] and "KiB" in done["freed_human"]
    assert not (tmp_path / "var/cache/apt/pkgcache.bin").exists()
    assert _run_module("image_cleanup", {"root": str(tmp_path)})["changed"] is False


def test_image_cleanup_module_fails_with_a_sentence(tmp_path):
    result = _run_module("image_cleanup", {"root": str(tmp_path / "missing")})
    assert result["failed"] and "not a directory" in result["msg"]


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to root needs root")
def test_mountpoint_guard_module_bad_mode(tmp_path):
    result = _run_module("mountpoint_guard", {"path": str(tmp_path / "m"), "mode": "rwx"})
    assert result["failed"] and "octal" in result["msg"]
