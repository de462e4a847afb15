# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""image_cleanup logic on a fake root: what goes, what stays, idempotence, check mode, symlink and mount safety."""

from __future__ import annotations

import os

import pytest

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._image_cleanup import cleanup, human_bytes


def _file(path, data=b"x" * 5000, mode=0o644):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    _file(r / "var/cache/apt/pkgcache.bin")
    _file(r / "var/cache/apt/archives/foo_1.0_arm64.deb")
    _file(r / "var/cache/apt/archives/partial/bar.deb")
    (r / "var/cache/apt/archives/lock").write_bytes(b"")
    _file(r / "var/lib/apt/lists/deb.debian.org_debian_dists_trixie_InRelease")
    _file(r / "var/lib/apt/lists/partial/x")
    (r / "var/lib/apt/lists/lock").write_bytes(b"")
    _file(r / "var/log/syslog", mode=0o640)
    _file(r / "var/log/syslog.1")
    _file(r / "var/log/dpkg.log.2.gz")
    _file(r / "var/log/apt/history.log")
    _file(r / "var/log/journal/0123/system.journal")
    _file(r / "tmp/leftover")
    _file(r / "tmp/.hidden")
    (r / "tmp").chmod(0o1777)
    _file(r / "var/tmp/x/y")
    _file(r / "root/.bash_history")
    _file(r / "home/cubeos/.bash_history")
    _file(r / "home/cubeos/.profile")
    _file(r / "etc/ssh/ssh_host_ed25519_key", mode=0o600)
    _file(r / "etc/ssh/ssh_host_ed25519_key.pub")
    _file(r / "etc/ssh/sshd_config")
    _file(r / "etc/machine-id", b"0123456789abcdef0123456789abcdef\n", 0o444)
    _file(r / "var/lib/dbus/machine-id", b"0123456789abcdef0123456789abcdef\n")
    _file(r / "etc/resolv.conf.pibake-orig")
    _file(r / "etc/resolv.conf", b"nameserver 10.0.0.1\n")
    return r


def test_cleans_everything_and_reports_bytes(root):
    result = cleanup(str(root), remove=["/etc/resolv.conf.pibake*"])
    assert result["changed"] is True
    assert result["freed_bytes"] >= 15 * 4096
    for gone in ("var/cache/apt/pkgcache.bin", "var/cache/apt/archives/foo_1.0_arm64.deb",
                 "var/cache/apt/archives/partial/bar.deb",
                 "var/lib/apt/lists/deb.debian.org_debian_dists_trixie_InRelease",
                 "var/lib/apt/lists/partial/x", "var/log/syslog.1", "var/log/dpkg.log.2.gz",
                 "var/log/journal/0123", "tmp/leftover", "tmp/.hidden", "var/tmp/x", "root/.bash_history",
                 "home/cubeos/.bash_history", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub",
                 "etc/resolv.conf.pibake-orig"):
        assert not os.path.lexists(root / gone), gone
    for kept in ("var/cache/apt/archives/lock", "var/lib/apt/lists/lock", "var/lib/apt/lists/partial",
                 "var/log/journal", "tmp", "var/tmp", "home/cubeos/.profile", "etc/ssh/sshd_config",
                 "etc/resolv.conf"):
        assert os.path.lexists(root / kept), kept
    assert (root / "var/log/syslog").stat().st_size == 0
    assert oct((root / "var/log/syslog").stat().st_mode & 0o777) == oct(0o640)
    assert (root / "var/log/apt/history.log").stat().st_size == 0
    assert (root / "etc/machine-id").read_bytes() == b""
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert (root / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert result["categories"]["apt_lists"]["removed"] >= 2


def test_second_run_changes_nothing(root):
    cleanup(str(root))
    again = cleanup(str(root))
    assert again["changed"] is False
    assert again["freed_bytes"] == 0


def test_check_mode_changes_nothing_but_reports(root):
    before = sorted(str(p) for p in root.rglob("*"))
    result = cleanup(str(root), check_mode=True)
    assert result["changed"] is True and result["freed_bytes"] > 0
    assert sorted(str(p) for p in root.rglob("*")) == before
    assert (root / "etc/machine-id").read_bytes() != b""


def test_missing_machine_id_is_created_empty(tmp_path):
    (tmp_path / "etc").mkdir()
    result = cleanup(str(tmp_path))
    assert (tmp_path / "etc/machine-id").read_bytes() == b""
    assert result["changed"] is True
    assert cleanup(str(tmp_path))["changed"] is False


def test_symlinks_never_lead_out_of_the_root(tmp_path, root):
    outside = _file(tmp_path / "outside" / "precious.log")
    _file(tmp_path / "outside" / ".bash_history")
    (root / "var/log/evil").symlink_to(outside)
    (root / "home/link").symlink_to(tmp_path / "outside")
    (root / "tmp/dirlink").symlink_to(tmp_path / "outside")
    cleanup(str(root), remove=["/home/link/precious.log"])
    assert outside.read_bytes() == b"x" * 5000
    assert (tmp_path / "outside/.bash_history").exists()
    assert not os.path.lexists(root / "tmp/dirlink")  # the link itself goes, not its target


def test_absolute_machine_id_symlink_is_refused(root):
    (root / "etc/machine-id").unlink()
    (root / "etc/machine-id").symlink_to("/etc/hostname")
    with pytest.raises(PibakeError, match="symlink"):
        cleanup(str(root))


def test_protected_payload_is_kept(root):
    payload = _file(root / "root/.ansible/tmp/ansible_payload_x/payload.zip")
    cleanup(str(root), remove=["/root/.ansible"], protect=[str(payload)])
    assert payload.exists()
    assert cleanup(str(root), remove=["/root/.ansible"], protect=[str(payload)])["changed"] is False


@pytest.mark.parametrize("pattern", ["relative/path", "/etc/../../escape"])
def test_bad_patterns_are_refused(root, pattern):
    with pytest.raises(PibakeError):
        cleanup(str(root), remove=[pattern])


def test_only_selected_categories(root):
    cleanup(str(root), apt_cache=False, apt_lists=False, logs=False, journal=False, tmp=False,
            shell_histories=False, ssh_host_keys=False, machine_id=False)
    assert (root / "var/cache/apt/pkgcache.bin").exists()
    assert (root / "etc/ssh/ssh_host_ed25519_key").exists()
    assert (root / "var/log/journal/0123/system.journal").exists()


def test_root_slash_counts_everything_as_inside():
    from ansible_collections.pibake.image.plugins.module_utils._image_cleanup import _Cleaner

    cleaner = _Cleaner("/", check_mode=True)
    assert cleaner.inside("/var/cache/apt/pkgcache.bin")
    assert cleaner.inside("/etc/machine-id")


def test_result_has_no_key_ansible_reserves():
    """A result key named skipped/failed/changed-like would make Ansible misreport the task."""
    result = cleanup("/tmp", apt_cache=False, apt_lists=False, logs=False,
                     journal=False, tmp=False, shell_histories=False, ssh_host_keys=False, machine_id=False,
                     check_mode=True)
    assert not {"skipped", "failed", "unreachable", "skip_reason"} & set(result)


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(3 * 1024 * 1024) == "3.0 MiB"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_other_filesystems_are_never_touched(root):
    import subprocess

    mnt = root / "tmp" / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pibake-test", str(mnt)], check=True)
    try:
        _file(mnt / "keep")
        result = cleanup(str(root))
        assert (mnt / "keep").exists()
        assert any("on another filesystem" in s for s in result["left_alone"])
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
