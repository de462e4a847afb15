# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Tests for _chroot_shell: Ansible's housekeeping shell commands recognised exactly and done below an image root
the way the image's shell would do them (compared with a real shell in a busybox chroot where the host has one)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _chroot_shell as cs

AS_ROOT = os.geteuid() == 0
BUSYBOX = shutil.which("busybox")
needs_real_chroot = pytest.mark.skipif(not AS_ROOT or not BUSYBOX, reason="needs root and a static busybox")


def wrap(inner: str, shell: str = "/bin/sh") -> str:
    """What ActionBase._low_level_execute_command sends for the default executable."""
    return f"{shell} -c {shlex.quote(inner + ' && sleep 0')}"


def mkdtemp_cmd(base: str, name: str, umask: str = "77") -> str:
    """ansible-core's sh shell plugin mkdtemp(), as it builds it."""
    tmp = os.path.join(base, name)
    cmd = f'mkdir -p "` echo {base} `"&& mkdir "` echo {tmp} `" && echo {name}="` echo {tmp} `"'
    return f"( umask {umask} && {cmd} )" if umask else cmd


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    for d in ("usr/bin", "etc", "tmp", "run", "root"):
        (r / d).mkdir(parents=True)
    (r / "bin").symlink_to("usr/bin")
    (r / "var").mkdir()
    (r / "var/run").symlink_to("/run")
    (r / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\npi:x:1000:1000::/home/pi:/bin/sh\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/keep").write_text("host\n")
    if BUSYBOX:
        shutil.copy(BUSYBOX, r / "usr/bin/busybox")
        for applet in ("sh", "mkdir", "chmod", "rm", "echo", "test", "sleep"):
            (r / "usr/bin" / applet).symlink_to("busybox")
    return r


def in_image(root, cmd: str):
    """Run ``cmd`` (a wrapped command) in a real chroot, as the connection's plain path does."""
    words = shlex.split(cmd)
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    proc = subprocess.run([chroot, str(root), *words], capture_output=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/root"})
    return proc.returncode, proc.stdout, proc.stderr


# -- parse ---------------------------------------------------------------------------------------------------------


def test_parse_recognises_the_shell_plugin_commands():
    op = cs.parse(wrap(mkdtemp_cmd("/run/pibake-ansible-tmp", "ansible-tmp-1.2-3-4")))
    assert op == cs.Op("mkdtemp", shell="/bin/sh", paths=("/run/pibake-ansible-tmp",
                                                          "/run/pibake-ansible-tmp/ansible-tmp-1.2-3-4"),
                       name="ansible-tmp-1.2-3-4", umask=0o77)
    assert cs.parse(wrap(mkdtemp_cmd("/tmp", "x", umask=""))).umask is None
    assert cs.parse(wrap("rm -f -r /root/.ansible/tmp/ansible-tmp-1/ > /dev/null 2>&1")) == cs.Op(
        "rm", shell="/bin/sh", paths=("/root/.ansible/tmp/ansible-tmp-1/",), recurse=True)
    assert cs.parse(wrap("rm -f '/tmp/a b' > /dev/null 2>&1")).paths == ("/tmp/a b",)
    assert cs.parse(wrap("chmod u+rwx /tmp/a/ /tmp/a/.source")) == cs.Op(
        "chmod", shell="/bin/sh", paths=("/tmp/a/", "/tmp/a/.source"), mode="u+rwx")
    assert cs.parse(wrap("echo ~root")) == cs.Op("home", shell="/bin/sh", name="root")
    assert cs.parse(wrap("echo ~")) == cs.Op("home", shell="/bin/sh", name="")
    assert cs.parse(wrap("test -e '/etc/my file'")) == cs.Op("exists", shell="/bin/sh", paths=("/etc/my file",))
    assert cs.parse(wrap("echo ~root", shell="/bin/bash")).shell == "/bin/bash"


@pytest.mark.parametrize("cmd", [
    "echo ~root",  # not wrapped
    wrap("echo ~root").replace(" && sleep 0", ""),
    wrap("echo ~root", shell="/usr/bin/fish"),
    wrap("echo ~root", shell="sh"),
    wrap("echo ~root") + " ; true",
    wrap("echo ~root; id"),
    wrap("echo ~$USER"),
    wrap("echo '~root'"),
    wrap("cd /tmp && echo ~root"),
    wrap("sudo -u pi /bin/sh -c 'echo ~pi'"),
    wrap(mkdtemp_cmd("~/.ansible/tmp", "ansible-tmp-1")),  # not expanded yet: the shell's tilde expansion
    wrap(mkdtemp_cmd("/tmp/$HOME", "ansible-tmp-1")),
    wrap(mkdtemp_cmd("/tmp/*", "ansible-tmp-1")),
    wrap(mkdtemp_cmd("/tmp/../etc", "ansible-tmp-1")),
    wrap(mkdtemp_cmd("relative/tmp", "ansible-tmp-1")),
    wrap(mkdtemp_cmd("/tmp", "ansible-tmp-1")).replace("/tmp/ansible-tmp-1 `\" && echo", "/tmp/other `\" && echo"),
    wrap("rm -f -r relative > /dev/null 2>&1"),
    wrap("rm -rf /tmp/x > /dev/null 2>&1"),
    wrap("rm -f -r /tmp/x"),
    wrap("rm -f -r /tmp/x /tmp/y > /dev/null 2>&1"),
    wrap("chmod 0755 /tmp/x"),
    wrap("chmod +x /tmp/x"),  # the umask would apply
    wrap("chmod u=rwx /tmp/x"),
    wrap("chmod u+s /tmp/x"),
    wrap("chmod -R u+rwx /tmp/x"),
    wrap("chmod u+rwx relative"),
    wrap("chown pi /tmp/x"),
    wrap("setfacl -m u:pi:r-x /tmp/x"),
    wrap("test -e relative"),
    "/bin/sh -c 'echo ~root && sleep 0",  # unbalanced quote
])
def test_parse_leaves_everything_else_to_the_image(cmd):
    assert cs.parse(cmd) is None


def test_apply_symbolic_like_chmod():
    assert cs.apply_symbolic("u+rwx", 0o100600, False) == 0o700
    assert cs.apply_symbolic("u+x", 0o104644, False) == 0o4744  # set-id bits stay
    assert cs.apply_symbolic("a+rX", 0o100600, False) == 0o644
    assert cs.apply_symbolic("a+rX", 0o100700, False) == 0o755
    assert cs.apply_symbolic("a+rX", 0o040700, True) == 0o755
    assert cs.apply_symbolic("go-rwx,u+w", 0o100444, False) == 0o600
    with pytest.raises(ValueError):
        cs.apply_symbolic("u=rw", 0o644, False)


# -- run -----------------------------------------------------------------------------------------------------------


def host(root, cmd: str, env=None):
    op = cs.parse(cmd)
    assert op is not None, cmd
    return cs.run(os.path.realpath(root), op, {"HOME": "/root"} if env is None else env)


def test_mkdtemp_creates_private_folders_below_the_root(root):
    out = host(root, wrap(mkdtemp_cmd("/root/.ansible/tmp", "ansible-tmp-1")))
    assert out == (0, b"ansible-tmp-1=/root/.ansible/tmp/ansible-tmp-1\n", b"")
    for rel in (".ansible", ".ansible/tmp", ".ansible/tmp/ansible-tmp-1"):
        st = os.stat(root / "root" / rel)
        assert stat.S_IMODE(st.st_mode) == 0o700
        if AS_ROOT:
            assert (st.st_uid, st.st_gid) == (0, 0)
    # the same name again fails: left to the image's mkdir, which reports it
    assert host(root, wrap(mkdtemp_cmd("/root/.ansible/tmp", "ansible-tmp-1"))) is None


def test_mkdtemp_follows_image_links_never_host_ones(root, tmp_path):
    out = host(root, wrap(mkdtemp_cmd("/var/run/pibake-ansible-tmp", "ansible-tmp-2")))
    assert out[0] == 0
    assert (root / "run/pibake-ansible-tmp/ansible-tmp-2").is_dir()  # /var/run -> /run of the image
    (root / "tmp/escape").symlink_to(str(tmp_path / "outside"))  # absolute: the image's own /…/outside
    assert host(root, wrap(mkdtemp_cmd("/tmp/escape", "ansible-tmp-3")))[0] == 0
    assert not (tmp_path / "outside/ansible-tmp-3").exists()
    assert (root / str(tmp_path / "outside").lstrip("/") / "ansible-tmp-3").is_dir()


def test_mkdtemp_keeps_the_process_umask(root):
    before = os.umask(0o022)
    try:
        host(root, wrap(mkdtemp_cmd("/tmp/deep/base", "t", umask="27")))
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)
    assert stat.S_IMODE(os.stat(root / "tmp/deep").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(root / "tmp/deep/base/t").st_mode) == 0o750


def test_mkdtemp_below_a_file_is_left_to_the_image(root):
    (root / "tmp/file").write_text("")
    assert host(root, wrap(mkdtemp_cmd("/tmp/file/sub", "t"))) is None


def test_rm_removes_a_tree_and_never_follows_links(root, tmp_path):
    tree = root / "root/.ansible/tmp/ansible-tmp-9"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub/.source").write_text("x")
    (tree / "out").symlink_to(str(tmp_path / "outside"))
    (tree / "up").symlink_to("../../../../..")
    assert host(root, wrap(f"rm -f -r {tree.relative_to(root).as_posix().join(['/', '/'])} > /dev/null 2>&1")) == (
        0, b"", b"")
    assert not tree.exists()
    assert (tmp_path / "outside/keep").read_text() == "host\n"
    assert (root / "root/.ansible/tmp").is_dir()
    # missing: rm -f succeeds quietly
    assert host(root, wrap("rm -f -r /root/.ansible/tmp/ansible-tmp-9/ > /dev/null 2>&1")) == (0, b"", b"")


def test_rm_of_a_link_removes_the_link(root, tmp_path):
    (root / "tmp/link").symlink_to(str(tmp_path / "outside"))
    assert host(root, wrap("rm -f -r /tmp/link > /dev/null 2>&1")) == (0, b"", b"")
    assert not os.path.lexists(root / "tmp/link")
    assert (tmp_path / "outside/keep").exists()
    (root / "tmp/link").symlink_to("/etc")
    assert host(root, wrap("rm -f -r /tmp/link/ > /dev/null 2>&1")) is None  # rm's business


def test_rm_leaves_directories_without_r_and_the_root_to_the_image(root):
    (root / "tmp/d").mkdir()
    assert host(root, wrap("rm -f /tmp/d > /dev/null 2>&1")) is None
    assert host(root, wrap("rm -f -r / > /dev/null 2>&1")) is None
    assert (root / "tmp/d").is_dir()


def test_rm_does_not_cross_mount_points(root, monkeypatch):
    tree = root / "tmp/t"
    (tree / "m").mkdir(parents=True)
    real_stat = os.stat

    def fake_stat(path, *args, **kwargs):
        st = real_stat(path, *args, **kwargs)
        if path == "m":
            return os.stat_result((st.st_mode, st.st_ino, st.st_dev + 1) + tuple(st)[3:])
        return st

    monkeypatch.setattr(cs.os, "stat", fake_stat)
    assert host(root, wrap("rm -f -r /tmp/t > /dev/null 2>&1")) is None
    assert tree.is_dir()


def test_chmod_follows_image_links(root, tmp_path):
    (root / "tmp/f").write_text("")
    os.chmod(root / "tmp/f", 0o600)
    (root / "tmp/l").symlink_to("f")
    os.chmod(tmp_path / "outside/keep", 0o600)
    (root / "tmp/host").symlink_to(str(tmp_path / "outside/keep"))
    assert host(root, wrap("chmod u+rwx,go+rX /tmp/l")) == (0, b"", b"")
    assert stat.S_IMODE(os.stat(root / "tmp/f").st_mode) == 0o755
    host(root, wrap("chmod a+r /tmp/host"))  # the image's (missing) file, never the host's
    assert stat.S_IMODE(os.stat(tmp_path / "outside/keep").st_mode) == 0o600


def test_chmod_of_a_missing_file_is_left_to_the_image(root):
    assert host(root, wrap("chmod u+rwx /tmp/missing")) is None


def test_home_from_the_image_passwd(root):
    assert host(root, wrap("echo ~pi")) == (0, b"/home/pi\n", b"")
    assert host(root, wrap("echo ~root")) == (0, b"/root\n", b"")
    assert host(root, wrap("echo ~nobody")) is None
    assert host(root, wrap("echo ~"), env={"HOME": "/srv"}) == (0, b"/srv\n", b"")
    assert host(root, wrap("echo ~"), env={}) is None
    (root / "etc/nsswitch.conf").write_text("passwd: ldap files\n")
    assert host(root, wrap("echo ~pi")) is None


def test_exists(root):
    (root / "tmp/l").symlink_to("/etc/passwd")
    (root / "tmp/dangling").symlink_to("/nowhere")
    assert host(root, wrap("test -e /tmp/l")) == (0, b"", b"")
    assert host(root, wrap("test -e /tmp/dangling")) == (1, b"", b"")
    assert host(root, wrap("test -e /nowhere")) == (1, b"", b"")


@needs_real_chroot
@pytest.mark.parametrize("inner", [
    mkdtemp_cmd("/root/.ansible/tmp", "ansible-tmp-5"),
    mkdtemp_cmd("/var/run/a/b", "ansible-tmp-6", umask="22"),
    "echo ~pi",
    "echo ~root",
    "test -e /etc/passwd",
    "test -e /nowhere",
])
def test_same_output_as_the_image_shell(root, tmp_path, inner):
    twin = tmp_path / "twin"
    shutil.copytree(root, twin, symlinks=True)
    mine = host(root, wrap(inner))
    theirs = in_image(twin, wrap(inner))
    assert mine == theirs
    for base, dirs, files in os.walk(twin):
        rel = os.path.relpath(base, twin)
        for name in dirs + files:
            a, b = os.lstat(os.path.join(root, rel, name)), os.lstat(os.path.join(base, name))
            assert (a.st_mode, a.st_uid, a.st_gid) == (b.st_mode, b.st_uid, b.st_gid), os.path.join(rel, name)


@needs_real_chroot
def test_chmod_and_rm_leave_the_same_tree_as_the_image_tools(root, tmp_path):
    for r in (root,):
        (r / "tmp/a/b").mkdir(parents=True)
        (r / "tmp/a/b/f").write_text("x")
        os.chmod(r / "tmp/a/b/f", 0o400)
    twin = tmp_path / "twin"
    shutil.copytree(root, twin, symlinks=True)
    (twin / "dev").mkdir()
    os.mknod(twin / "dev/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    for inner in ("chmod u+rwx,g+rX,o-r /tmp/a/ /tmp/a/b/f", "rm -f -r /tmp/a/b > /dev/null 2>&1"):
        assert host(root, wrap(inner)) == in_image(twin, wrap(inner))
        for rel in ("tmp/a", "tmp/a/b", "tmp/a/b/f"):
            assert os.path.lexists(root / rel) == os.path.lexists(twin / rel)
            if os.path.lexists(root / rel):
                assert os.stat(root / rel).st_mode == os.stat(twin / rel).st_mode
