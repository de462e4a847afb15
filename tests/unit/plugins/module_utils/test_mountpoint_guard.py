# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The bare-mountpoint guard: mode 0000 + immutable, idempotent, check mode, and a drive mounted on top."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _mountpoint_guard as mg
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chown to root and chattr +i need root")


def _supports_flags(path):
    try:
        mg.get_flags(str(path))
        return True
    except mg.FlagsUnsupported:
        return False


@pytest.fixture
def mountpoint(tmp_path):
    """var/lib/ourbox inside a tmpfs of our own, so the bind mount of a mounted case never touches the host's /."""
    fs = tmp_path / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "pibake-guard-test", str(fs)], check=True)
    path = fs / "var" / "lib" / "ourbox"
    try:
        path.parent.mkdir(parents=True)
        if not _supports_flags(path.parent):
            pytest.skip("tmpfs here has no inode attributes (Linux < 6.0)")
        yield path
    finally:
        if path.exists():
            while os.path.ismount(path):
                subprocess.run(["umount", str(path)], check=True)
            mg.set_flags(str(path), mg.get_flags(str(path)) & ~mg.FS_IMMUTABLE_FL)
        subprocess.run(["umount", str(fs)], check=True)


def test_immutable_on_the_hosts_ext4(tmp_path):
    """The same on the temp dir's own filesystem (ext4 here, like an image root)."""
    if not _supports_flags(tmp_path):
        pytest.skip("the filesystem of the temp dir has no inode attributes")
    path = tmp_path / "ourbox"
    try:
        assert mg.guard(str(path))["immutable"] is True
        with pytest.raises(PermissionError):
            (path / "x").write_text("")
    finally:
        mg.set_flags(str(path), mg.get_flags(str(path)) & ~mg.FS_IMMUTABLE_FL)


def test_guard_makes_the_directory_unwritable_even_for_root(mountpoint):
    result = mg.guard(str(mountpoint))
    assert result["changed"] and result["created"] and result["immutable"] is True
    st = os.lstat(mountpoint)
    assert stat.S_IMODE(st.st_mode) == 0 and (st.st_uid, st.st_gid) == (0, 0)
    assert mg.get_flags(str(mountpoint)) & mg.FS_IMMUTABLE_FL
    with pytest.raises(PermissionError):
        (mountpoint / "file").write_text("must not land on the root fs")
    again = mg.guard(str(mountpoint))
    assert again["changed"] is False and again["changes"] == []


def test_check_mode_only_reports(mountpoint):
    result = mg.guard(str(mountpoint), check_mode=True)
    assert result["changed"] and "create directory" in result["changes"]
    assert not mountpoint.exists()


def test_wrong_mode_is_fixed_through_the_immutable_flag(mountpoint):
    mg.guard(str(mountpoint))
    mg.set_flags(str(mountpoint), mg.get_flags(str(mountpoint)) & ~mg.FS_IMMUTABLE_FL)
    os.chmod(mountpoint, 0o755)
    mg.set_flags(str(mountpoint), mg.get_flags(str(mountpoint)) | mg.FS_IMMUTABLE_FL)
    result = mg.guard(str(mountpoint))
    assert "mode 0000" in result["changes"]
    assert stat.S_IMODE(os.lstat(mountpoint).st_mode) == 0
    assert mg.get_flags(str(mountpoint)) & mg.FS_IMMUTABLE_FL


def test_unguard(mountpoint):
    mg.guard(str(mountpoint))
    result = mg.guard(str(mountpoint), state="unguarded")
    assert result["changed"] and not mg.get_flags(str(mountpoint)) & mg.FS_IMMUTABLE_FL
    assert stat.S_IMODE(os.lstat(mountpoint).st_mode) == 0o755
    assert mg.guard(str(mountpoint), state="unguarded")["changed"] is False


def test_refuses_file_and_symlink(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(PibakeError, match="not a directory"):
        mg.guard(str(tmp_path / "f"))
    (tmp_path / "l").symlink_to(tmp_path)
    with pytest.raises(PibakeError, match="symlink"):
        mg.guard(str(tmp_path / "l"))


def test_drive_mounted_on_top_is_left_alone(mountpoint):
    mg.guard(str(mountpoint), immutable=False)  # bare dir exists, mode 0000, not yet immutable
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "pibake-test", str(mountpoint)], check=True)
    assert mg._containing_mount(str(mountpoint)) == str(mountpoint.parent.parent.parent)
    try:
        result = mg.guard(str(mountpoint))
        assert result["mounted"] is True
        assert result["changes"] == ["set immutable attribute"]
        assert stat.S_IMODE(os.lstat(mountpoint).st_mode) == 0o755  # the drive's own root is untouched
        assert mg.guard(str(mountpoint))["changed"] is False
        with pytest.raises(PibakeError, match="mounted"):
            mg.guard(str(mountpoint), allow_bind=False)
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)
    assert mg.get_flags(str(mountpoint)) & mg.FS_IMMUTABLE_FL
    assert not [line for line in open("/proc/self/mountinfo") if "pibake-guard." in line]
