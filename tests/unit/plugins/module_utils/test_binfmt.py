# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
import sys

from ansible_collections.pibake.image.plugins.module_utils import _binfmt, _target_mode


def test_elf_machine_of_the_running_python():
    assert _binfmt.elf_machine(sys.executable if not sys.executable.endswith("shims/python3") else "/bin/ls") in ("x86_64", "aarch64")


def test_elf_machine_of_a_non_elf(tmp_path):
    script = tmp_path / "x.sh"
    script.write_text("#!/bin/sh\n")
    assert _binfmt.elf_machine(str(script)) == ""


def test_native_needs_no_binfmt():
    assert _binfmt.ensure_binfmt(_binfmt.host_arch()) == "native"
    assert _binfmt.ensure_binfmt("native") == "native"


def test_target_mode():
    assert _target_mode.target_mode("pibake.image.chroot") == "image"
    assert _target_mode.target_mode("ssh") == "device"
    assert _target_mode.target_mode("") == "device"
