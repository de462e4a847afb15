# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Tests for _chroot_stat: only ActionBase._execute_remote_stat's call is answered, and the answer is the stat
module's own (compared with ansible.builtin.stat run by the host's Python on the same files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _chroot_stat as cst

INTERNAL = {"path": "/etc/hostname", "follow": False, "get_checksum": True, "get_size": False,
            "checksum_algorithm": "sha1"}
META = {"_ansible_check_mode": False, "_ansible_no_log": False, "_ansible_module_name": "stat",
        "_ansible_ignore_unknown_opts": True}


def params(**changes):
    args = dict(INTERNAL)
    args.update({k: v for k, v in changes.items() if not k.startswith("_")})
    meta = dict(META)
    meta.update({k: v for k, v in changes.items() if k.startswith("_")})
    return {"ANSIBLE_MODULE_ARGS": {**args, **meta}}


def payload(fqn: str, param_obj: dict) -> bytes:
    """The parts of an ansible-core 2.19 AnsiballZ payload that payload_call reads."""
    literal = repr(json.dumps(param_obj))
    return (
        b"#!/usr/bin/python3\n_ANSIBALLZ_WRAPPER = True\n\ndef _ansiballz_main(): pass\n"
        b'\nif __name__ == "__main__":\n    _ansiballz_main(\n'
        + f"ansible_module='stat',\nmodule_fqn='{fqn}',\nprofile='legacy',\nparams={literal},\n"
          "extensions={},\nzip_data='UEs=',\n)\n".encode()
    )


def test_payload_call_reads_the_module_and_its_parameters():
    obj = params(path="/etc/it's")
    assert cst.payload_call(payload("ansible.modules.stat", obj)) == ("ansible.modules.stat", obj)
    assert cst.payload_call(b"#!/bin/sh\necho hi\n") is None
    assert cst.payload_call(b"") is None


def test_parse_accepts_only_the_internal_remote_stat():
    request = cst.parse(("ansible.modules.stat", params(follow=True, get_checksum=False)))
    assert request == cst.Request("/etc/hostname", True, False, {
        "path": "/etc/hostname", "follow": True, "get_checksum": False, "get_size": False,
        "checksum_algorithm": "sha1", "get_mime": True, "get_attributes": True})
    assert cst.parse(None) is None


@pytest.mark.parametrize("fqn,obj", [
    ("ansible.modules.copy", params()),
    ("ansible.legacy.stat", params()),  # a stat module of the playbook's own
    ("ansible.modules.stat", {"ANSIBLE_MODULE_ARGS": {"path": "/etc/hostname", **META}}),  # a user's stat task
    ("ansible.modules.stat", params(_ansible_ignore_unknown_opts=False)),
    ("ansible.modules.stat", params(_ansible_no_log=True)),
    ("ansible.modules.stat", params(get_size=True)),
    ("ansible.modules.stat", params(checksum_algorithm="md5")),
    ("ansible.modules.stat", params(path="relative")),
    ("ansible.modules.stat", params(path="~/x")),
    ("ansible.modules.stat", params(path="/home/$USER")),
    ("ansible.modules.stat", {"ANSIBLE_MODULE_ARGS": {**INTERNAL, "get_mime": False, **META}}),
])
def test_parse_refuses_everything_else(fqn, obj):
    assert cst.parse((fqn, obj)) is None


# -- the answer equals the module's --------------------------------------------------------------------------------


def real_module(path: str, follow: bool, checksum: bool) -> dict:
    """ansible.builtin.stat run by the host's Python with _execute_remote_stat's arguments."""
    args = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"pibake-stat-args-{os.getpid()}.json")
    with open(args, "w", encoding="utf-8") as handle:
        json.dump(params(path=path, follow=follow, get_checksum=checksum), handle)
    try:
        out = subprocess.run([sys.executable, "-m", "ansible.modules.stat", args], capture_output=True, check=True,
                             env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}).stdout
    finally:
        os.unlink(args)
    return json.loads(out)


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "t"
    (t / "d").mkdir(parents=True)
    (t / "f").write_text("content\n")
    os.chmod(t / "f", 0o4755)
    (t / "empty").write_text("")
    (t / "rel").symlink_to("f")
    (t / "dirlink").symlink_to("d")
    (t / "dangling").symlink_to("nowhere")
    (t / "up").symlink_to("../t/f")
    os.mkfifo(t / "fifo")
    return t


@pytest.mark.parametrize("name", ["f", "empty", "d", "rel", "dirlink", "dirlink/", "dangling", "up", "fifo", "nope",
                                  "d/..", "nope/deeper", ""])
@pytest.mark.parametrize("follow", [False, True])
def test_same_answer_as_the_stat_module(tree, monkeypatch, name, follow):
    path = str(tree / name) if name else "/"
    real_find = cst._find_tool
    monkeypatch.setattr(cst, "_find_tool",
                        lambda root, tool, env: None if tool == "file" else real_find(root, tool, env))
    request = cst.parse(("ansible.modules.stat", params(path=path, follow=follow)))
    mine = cst.run("/", request, {"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    theirs = real_module(path, follow, True)
    if mine is None:  # allowed: the module then runs (attributes beyond "e", users only NSS knows)
        return
    mine = json.loads(mine)
    for result in (mine, theirs):
        result["stat"].pop("atime", None)  # the module's own run reads the file too
        result["stat"].pop("mimetype", None)  # the host has `file`; the image case (no `file`) is "unknown"
        result["stat"].pop("charset", None)
    assert mine == theirs


def test_names_come_from_the_image_files(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("+nis\nroot:x:0:0::/root:/bin/sh\npi:x:1000:1000::/home/pi:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\npi:x:1000:\n")
    assert cst._names(str(root), "passwd", 1000) == "pi"
    assert cst._names(str(root), "group", 0) == "root"
    assert cst._names(str(root), "passwd", 4242) == ""  # files only: the module finds no name either
    (root / "etc/nsswitch.conf").write_text("passwd:  files systemd\ngroup: sss files\n")
    assert cst._names(str(root), "passwd", 0) == "root"
    assert cst._names(str(root), "passwd", 4242) is None  # systemd might know it: ask the module
    assert cst._names(str(root), "group", 0) is None


def test_tools_are_looked_up_in_the_image(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    (root / "sbin/lsattr").write_text("")
    assert cst._find_tool(str(root), "lsattr", {"PATH": "/usr/bin"}) is None  # not executable
    os.chmod(root / "sbin/lsattr", 0o755)
    assert cst._find_tool(str(root), "lsattr", {"PATH": "/usr/bin"}) == "/sbin/lsattr"
    assert cst._find_tool(str(root), "file", {"PATH": "/usr/bin"}) is None


def test_attributes(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_text("x")
    (tmp_path / "l").symlink_to("f")
    root = str(tmp_path)

    def fake_ioctl(flags, version=7):
        def ioctl(fd, request, buf, mutate):
            if request == cst.FS_IOC_GETVERSION:
                if version is None:
                    raise OSError(25, "Inappropriate ioctl for device")
                buf[0] = version
            else:
                buf[0] = flags
            return 0
        return ioctl

    monkeypatch.setattr(cst.fcntl, "ioctl", fake_ioctl(cst.FS_EXTENT_FL))
    assert cst._lsattr(root, str(f), str(f)) == {"version": "7", "attributes": ["extents"], "attr_flags": "e"}
    assert cst._lsattr(root, str(tmp_path / "l"), str(f)) == {}  # lsattr refuses the link itself
    monkeypatch.setattr(cst.fcntl, "ioctl", fake_ioctl(0))
    assert cst._lsattr(root, str(f), str(f)) == {"version": "7", "attributes": [], "attr_flags": ""}
    monkeypatch.setattr(cst.fcntl, "ioctl", fake_ioctl(0x10 | cst.FS_EXTENT_FL))  # immutable too
    assert cst._lsattr(root, str(f), str(f)) is None
    monkeypatch.setattr(cst.fcntl, "ioctl", fake_ioctl(0, version=None))  # tmpfs
    assert cst._lsattr(root, str(f), str(f)) == {}


def test_run_answers_missing_and_never_leaves_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    (tmp_path / "secret").write_text("host\n")
    (root / "etc/link").symlink_to(str(tmp_path / "secret"))  # the image's own path of that name: missing
    request = cst.parse(("ansible.modules.stat", params(path="/etc/link", follow=True)))
    out = json.loads(cst.run(str(root), request, {"PATH": "/usr/bin"}))
    assert out["stat"] == {"exists": False}
    request = cst.parse(("ansible.modules.stat", params(path="/etc/link")))
    out = json.loads(cst.run(str(root), request, {"PATH": "/usr/bin"}))["stat"]
    assert out["islnk"] and out["lnk_target"] == str(tmp_path / "secret")
    assert out["lnk_source"] == str(tmp_path / "secret")  # as the image resolves it
    assert out["readable"] is False and "checksum" not in out
    assert out["version"] is None and out["attr_flags"] == ""  # no lsattr in this image
    assert out["mimetype"] == "unknown"
