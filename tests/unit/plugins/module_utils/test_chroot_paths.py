# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Tests for _chroot_paths: resolution below an image root, and host-side put/fetch that never leave it."""

from __future__ import annotations

import hashlib
import os
import random
import stat

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _chroot_paths as cp
from ansible_collections.pibake.image.plugins.module_utils._chroot_paths import (
    executable_in_root,
    fetch_from_root,
    is_inside,
    put_into_root,
    real_root,
    resolve_in_root,
)
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

AS_ROOT = os.geteuid() == 0


@pytest.fixture
def root(tmp_path):
    """A tiny image root: usrmerge links, /etc, and a file outside the root that must never be touched."""
    r = tmp_path / "root"
    for d in ("usr/bin", "etc", "var/lib", "tmp"):
        (r / d).mkdir(parents=True)
    (r / "bin").symlink_to("usr/bin")
    (r / "usr/bin/dash").write_bytes(b"#!fake\n")
    (r / "usr/bin/dash").chmod(0o755)
    (r / "usr/bin/sh").symlink_to("dash")
    (r / "etc/shadow").write_text("image shadow\n")
    (r / "etc/shadow").chmod(0o640)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    return str(real_root(str(r)))


def _outside(root: str) -> str:
    return os.path.join(os.path.dirname(root), "outside")


def _digest(path: str):
    st = os.stat(path)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), st.st_mode, st.st_uid, st.st_mtime_ns


# -- resolve_in_root ---------------------------------------------------------------------------------------------


def test_plain_and_relative_paths(root):
    assert resolve_in_root(root, "/etc/shadow") == f"{root}/etc/shadow"
    assert resolve_in_root(root, "etc/shadow") == f"{root}/etc/shadow"
    assert resolve_in_root(root, "/") == root
    assert resolve_in_root(root, "") == root
    assert resolve_in_root(root, "//etc/./shadow") == f"{root}/etc/shadow"


def test_dotdot_cannot_climb_above_root(root):
    assert resolve_in_root(root, "/../../../etc/shadow") == f"{root}/etc/shadow"
    assert resolve_in_root(root, "/etc/../../..") == root


def test_absolute_symlink_is_taken_relative_to_root(root):
    os.symlink("/etc/shadow", f"{root}/etc/x")
    assert resolve_in_root(root, "/etc/x") == f"{root}/etc/shadow"


def test_relative_symlink_cannot_climb_above_root(root):
    os.symlink("../../../../../../outside/secret", f"{root}/etc/y")
    assert resolve_in_root(root, "/etc/y") == f"{root}/outside/secret"


def test_symlink_to_host_absolute_path_of_outside_file_stays_inside(root):
    target = os.path.join(_outside(root), "secret")
    os.symlink(target, f"{root}/etc/z")
    assert resolve_in_root(root, "/etc/z") == root + target


def test_symlinked_directories_usrmerge(root):
    assert resolve_in_root(root, "/bin/sh") == f"{root}/usr/bin/dash"
    os.symlink("/", f"{root}/var/lib/top")
    assert resolve_in_root(root, "/var/lib/top/bin/sh") == f"{root}/usr/bin/dash"
    assert resolve_in_root(root, "/var/lib/top/..") == root


def test_dotdot_applies_after_following_a_link(root):
    # /bin -> usr/bin, so /bin/.. is /usr as the kernel would see it, not /
    assert resolve_in_root(root, "/bin/../bin/sh") == f"{root}/usr/bin/dash"
    assert resolve_in_root(root, "/bin/..") == f"{root}/usr"


def test_missing_components_are_kept(root):
    assert resolve_in_root(root, "/etc/new/file") == f"{root}/etc/new/file"
    assert resolve_in_root(root, "/nope/../bin/sh") == f"{root}/usr/bin/dash"


def test_dangling_absolute_symlink_resolves_to_its_target_inside(root):
    os.symlink("/etc/created-later", f"{root}/etc/dangling")
    assert resolve_in_root(root, "/etc/dangling") == f"{root}/etc/created-later"


def test_symlink_loop_is_refused(root):
    os.symlink("b", f"{root}/etc/a")
    os.symlink("a", f"{root}/etc/b")
    with pytest.raises(PibakeError, match="levels of symbolic links"):
        resolve_in_root(root, "/etc/a")


def test_symlink_depth_limit(root):
    for i in range(5):
        os.symlink(f"l{i + 1}", f"{root}/etc/l{i}")
    os.symlink("shadow", f"{root}/etc/l5")
    assert resolve_in_root(root, "/etc/l0", max_symlinks=6) == f"{root}/etc/shadow"
    with pytest.raises(PibakeError):
        resolve_in_root(root, "/etc/l0", max_symlinks=5)


def test_default_symlink_limit_is_the_kernels_40(root):
    for i in range(40):
        os.symlink(f"c{i + 1}", f"{root}/etc/c{i}")
    os.symlink("shadow", f"{root}/etc/c40")
    with pytest.raises(PibakeError, match="more than 40 levels"):
        resolve_in_root(root, "/etc/c0")
    assert resolve_in_root(root, "/etc/c1") == f"{root}/etc/shadow"


def test_path_through_a_regular_file_is_refused(root):
    with pytest.raises(PibakeError, match="not a directory"):
        resolve_in_root(root, "/etc/shadow/x")


def test_is_inside():
    assert is_inside("/a/b", "/a/b")
    assert is_inside("/a/b", "/a/b/c")
    assert not is_inside("/a/b", "/a/bc")
    assert not is_inside("/a/b", "/a")
    assert is_inside("/", "/anything")


@pytest.mark.skipif(not AS_ROOT, reason="compares with the kernel's view through a real chroot(2)")
def test_matches_the_kernel_inside_a_real_chroot(tmp_path):
    """Random trees of dirs and links: our answer equals realpath() computed inside chroot(2), and stays inside."""
    rng = random.Random(20260101)
    r = tmp_path / "fuzzroot"
    r.mkdir()
    root = str(real_root(str(r)))
    names = ["a", "b", "c", "d"]
    dirs = [""]
    for dummy in range(12):
        parent = rng.choice(dirs)
        d = os.path.join(parent, rng.choice(names))
        if not os.path.lexists(os.path.join(root, d)):
            os.mkdir(os.path.join(root, d))
            dirs.append(d)
    for dummy in range(25):
        parent = rng.choice(dirs)
        link = os.path.join(root, parent, "l" + rng.choice(names))
        if os.path.lexists(link):
            continue
        target = "/".join(rng.choice(names + ["..", "..", "la", "lb"]) for dummy_part in range(rng.randint(1, 4)))
        if rng.random() < 0.4:
            target = "/" + target
        os.symlink(target, link)
    parts = names + ["la", "lb", "lc", "ld", "..", "x"]
    paths = ["/" + "/".join(rng.choice(parts) for dummy_part in range(rng.randint(1, 5))) for dummy in range(300)]

    ours = {}
    for p in paths:
        try:
            ours[p] = resolve_in_root(root, p)
        except PibakeError:
            continue  # loops and paths through files: the kernel would fail too
        assert is_inside(root, ours[p]), (p, ours[p])

    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: see the tree as the kernel does from inside the root
        try:
            os.close(rd)
            os.chroot(root)
            os.chdir("/")
            out = "\0".join(os.path.realpath(p) for p in ours).encode()
            os.write(wr, out)
        finally:
            os._exit(0)
    os.close(wr)
    chunks = []
    while chunk := os.read(rd, 65536):
        chunks.append(chunk)
    os.close(rd)
    os.waitpid(pid, 0)
    kernel = b"".join(chunks).decode().split("\0")
    assert len(kernel) == len(ours)
    for (p, mine), theirs in zip(ours.items(), kernel):
        expected = root if theirs == "/" else root + theirs
        assert mine == expected, p
    assert len(ours) > 100


# -- executable_in_root / real_root ------------------------------------------------------------------------------


def test_executable_follows_usrmerge(root):
    assert executable_in_root(root, "/bin/sh") == f"{root}/usr/bin/dash"


def test_executable_missing_or_not_executable(root):
    with pytest.raises(PibakeError, match="holds no executable /bin/bash"):
        executable_in_root(root, "/bin/bash")
    os.chmod(f"{root}/usr/bin/dash", 0o644)
    with pytest.raises(PibakeError, match="holds no executable /bin/sh"):
        executable_in_root(root, "/bin/sh")
    with pytest.raises(PibakeError, match="absolute path"):
        executable_in_root(root, "sh")


def test_executable_absolute_link_does_not_use_host_binary(root):
    # the host surely has /usr/bin/env; the image does not, so a link to it must not count
    os.symlink("/usr/bin/env", f"{root}/usr/bin/bash")
    with pytest.raises(PibakeError):
        executable_in_root(root, "/bin/bash")


def test_real_root_errors(tmp_path):
    with pytest.raises(PibakeError, match="is not a directory"):
        real_root(str(tmp_path / "absent"))
    with pytest.raises(PibakeError, match="No image root"):
        real_root("")


# -- put_into_root / fetch_from_root -----------------------------------------------------------------------------


@pytest.fixture
def local_file(tmp_path):
    p = tmp_path / "local.txt"
    p.write_text("from the controller\n")
    p.chmod(0o755)
    if AS_ROOT:
        os.chown(p, 65534, 65534)
    return str(p)


def test_put_through_absolute_symlink_writes_the_image_file_not_the_host_file(root, local_file):
    os.symlink("/etc/shadow", f"{root}/etc/x")
    host_before = _digest("/etc/shadow") if os.access("/etc/shadow", os.R_OK) else None
    written = put_into_root(root, local_file, "/etc/x")
    assert written == f"{root}/etc/shadow"
    with open(f"{root}/etc/shadow") as f:
        assert f.read() == "from the controller\n"
    assert os.path.islink(f"{root}/etc/x")  # the link itself is left alone
    if host_before is not None:
        assert _digest("/etc/shadow") == host_before


def test_put_through_symlink_to_outside_path_stays_inside(root, local_file):
    secret = os.path.join(_outside(root), "secret")
    before = _digest(secret)
    os.symlink(secret, f"{root}/etc/x")
    os.symlink("../../../../../../../../" + secret.lstrip("/"), f"{root}/etc/y")
    os.makedirs(root + os.path.dirname(secret))
    put_into_root(root, local_file, "/etc/x")
    put_into_root(root, local_file, "/etc/y")
    assert _digest(secret) == before
    with open(root + secret) as f:
        assert f.read() == "from the controller\n"


def test_put_through_symlinked_parent_directory_stays_inside(root, local_file):
    outside = _outside(root)
    os.symlink(outside, f"{root}/var/lib/data")
    os.makedirs(root + outside)
    put_into_root(root, local_file, "/var/lib/data/new")
    assert not os.path.exists(os.path.join(outside, "new"))
    assert os.path.exists(root + outside + "/new")


def test_fetch_through_absolute_symlink_reads_the_image_file_not_the_host_file(root, tmp_path):
    os.symlink("/etc/shadow", f"{root}/etc/x")
    dest = tmp_path / "fetched"
    assert fetch_from_root(root, "/etc/x", str(dest)) == f"{root}/etc/shadow"
    assert dest.read_text() == "image shadow\n"


def test_fetch_through_symlink_to_outside_path_stays_inside(root, tmp_path):
    secret = os.path.join(_outside(root), "secret")
    os.symlink(secret, f"{root}/etc/x")
    with pytest.raises(PibakeError, match="does not exist in the image"):
        fetch_from_root(root, "/etc/x", str(tmp_path / "fetched"))
    os.makedirs(root + os.path.dirname(secret))
    with open(root + secret, "w") as f:
        f.write("image copy\n")
    fetch_from_root(root, "/etc/x", str(tmp_path / "fetched"))
    assert (tmp_path / "fetched").read_text() == "image copy\n"


def test_put_new_file_is_root_owned_0644_and_atomic(root, local_file):
    put_into_root(root, local_file, "/etc/new.conf")
    st = os.stat(f"{root}/etc/new.conf")
    assert stat.S_IMODE(st.st_mode) == 0o644
    if AS_ROOT:
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert sorted(os.listdir(f"{root}/etc")) == ["new.conf", "shadow"]  # no temporary left behind


def test_put_over_existing_file_keeps_its_owner_and_mode(root, local_file):
    if AS_ROOT:
        os.chown(f"{root}/etc/shadow", 0, 42)
    ino = os.stat(f"{root}/etc/shadow").st_ino
    put_into_root(root, local_file, "/etc/shadow")
    st = os.stat(f"{root}/etc/shadow")
    assert stat.S_IMODE(st.st_mode) == 0o640
    if AS_ROOT:
        assert (st.st_uid, st.st_gid) == (0, 42)
    assert st.st_ino != ino  # replaced by rename, never truncated in place


def test_put_large_file(root, tmp_path):
    src = tmp_path / "big"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 7))
    put_into_root(root, str(src), "/tmp/big")
    with open(f"{root}/tmp/big", "rb") as f:
        assert f.read() == src.read_bytes()


def test_put_failure_leaves_no_temporary(root, local_file, monkeypatch):
    def boom(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cp, "_copy_fd", boom)
    with pytest.raises(OSError):
        put_into_root(root, local_file, "/etc/fail")
    assert sorted(os.listdir(f"{root}/etc")) == ["shadow"]


def test_put_errors(root, local_file):
    with pytest.raises(PibakeError, match="directory /nope does not exist"):
        put_into_root(root, local_file, "/nope/file")
    with pytest.raises(PibakeError, match="is a directory"):
        put_into_root(root, local_file, "/etc")
    with pytest.raises(PibakeError, match="root directory"):
        put_into_root(root, local_file, "/")
    os.mkfifo(f"{root}/tmp/fifo")
    with pytest.raises(PibakeError, match="not a regular file"):
        put_into_root(root, local_file, "/tmp/fifo")


def test_fetch_errors(root, tmp_path):
    with pytest.raises(PibakeError, match="does not exist"):
        fetch_from_root(root, "/etc/missing", str(tmp_path / "o"))
    with pytest.raises(PibakeError, match="not a regular file"):
        fetch_from_root(root, "/etc", str(tmp_path / "o"))
    os.mkfifo(f"{root}/tmp/fifo")
    with pytest.raises(PibakeError, match="not a regular file"):  # and does not block on it
        fetch_from_root(root, "/tmp/fifo", str(tmp_path / "o"))


def test_swapped_directory_detected_at_open(root, local_file, tmp_path, monkeypatch):
    """A race: the path was resolved, then a directory became a host-absolute symlink before the open."""
    outside = _outside(root)
    os.symlink(outside, f"{root}/swapped")
    monkeypatch.setattr(cp, "resolve_in_root", lambda r, p, **_: f"{r}/swapped/{os.path.basename(p)}")
    before = _digest(os.path.join(outside, "secret"))
    with pytest.raises(PibakeError, match="leads outside the image root"):
        put_into_root(root, local_file, "/etc/secret")
    with pytest.raises(PibakeError, match="leads outside the image root"):
        fetch_from_root(root, "/etc/secret", str(tmp_path / "o"))
    assert _digest(os.path.join(outside, "secret")) == before
    assert not (tmp_path / "o").exists()
