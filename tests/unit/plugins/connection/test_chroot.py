# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Unit tests for the pibake.image.chroot connection, loaded through Ansible's connection loader."""

from __future__ import annotations

import hashlib
import os
import shutil
from io import StringIO
from unittest import mock

import pytest
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.playbook.play_context import PlayContext
from ansible.plugins.loader import connection_loader

PLUGIN = "ansible_collections.pibake.image.plugins.connection.chroot"
AS_ROOT = os.geteuid() == 0
BUSYBOX = shutil.which("busybox")
needs_real_chroot = pytest.mark.skipif(
    not AS_ROOT or not BUSYBOX, reason="runs a real chroot: needs root and a static busybox on the host"
)


def make_connection(**options):
    conn = connection_loader.get("pibake.image.chroot", PlayContext(), StringIO())
    assert conn is not None, "the plugin did not load"
    conn.set_options(var_options=options)
    return conn


@pytest.fixture
def root(tmp_path):
    """A minimal usrmerged root whose /bin/sh is executable; outside/ next to it stands for host files."""
    r = tmp_path / "root"
    (r / "usr/bin").mkdir(parents=True)
    (r / "etc").mkdir()
    (r / "tmp").mkdir()
    (r / "bin").symlink_to("usr/bin")
    sh = r / "usr/bin/busybox"
    if BUSYBOX:
        shutil.copy(BUSYBOX, sh)
    else:
        sh.write_bytes(b"#!/nonexistent\n")
    sh.chmod(0o755)
    for applet in ("sh", "cat", "env", "id", "pwd", "true", "false"):
        (r / "usr/bin" / applet).symlink_to("busybox")
    (r / "etc/shadow").write_text("image shadow\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside/secret").write_text("host secret\n")
    return r


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest(), os.stat(path).st_mtime_ns


# -- loading, options, root checks -------------------------------------------------------------------------------


def test_loads_through_the_loader_with_pipelining_on():
    conn = make_connection()
    assert conn.transport == "pibake.image.chroot"
    assert conn.has_pipelining
    assert conn.get_option("pipelining") is True
    assert conn.get_option("executable") == "/bin/sh"
    assert conn.get_option("pibake_chroot_exe") == "chroot"
    assert conn.get_option("pibake_chroot_env") == {}


def test_root_from_ansible_host(root):
    conn = make_connection(ansible_host=str(root))
    conn._connect()
    assert conn.connected
    assert conn._root() == os.path.realpath(root)


def test_pibake_chroot_root_wins_over_ansible_host(root, tmp_path):
    conn = make_connection(ansible_host=str(tmp_path / "absent"), pibake_chroot_root=str(root))
    conn._connect()
    assert conn._root() == os.path.realpath(root)


def test_missing_root_is_one_sentence(tmp_path):
    conn = make_connection(ansible_host=str(tmp_path / "absent"))
    with pytest.raises(AnsibleConnectionFailure, match=r"^Image root .*absent is not a directory; attach the image"):
        conn._connect()


def test_root_without_shell_is_refused(root):
    (root / "usr/bin/sh").unlink()
    conn = make_connection(ansible_host=str(root))
    with pytest.raises(AnsibleConnectionFailure, match="holds no executable /bin/sh"):
        conn._connect()


def test_shell_link_to_host_path_is_not_accepted(root):
    """/bin/sh -> /usr/bin/dash must be looked up in the image, where there is no dash."""
    (root / "usr/bin/sh").unlink()
    (root / "usr/bin/sh").symlink_to("/usr/bin/dash")
    conn = make_connection(ansible_host=str(root))
    with pytest.raises(AnsibleConnectionFailure, match="holds no executable /bin/sh"):
        conn._connect()


# -- exec_command ------------------------------------------------------------------------------------------------


def _fake_popen(returncode=0, stdout=b"out", stderr=b""):
    proc = mock.MagicMock()
    proc.communicate.return_value = (stdout, stderr)
    proc.returncode = returncode
    return mock.MagicMock(return_value=proc)


def test_exec_argv_and_clean_environment(root, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", "/work/main/.venv")
    monkeypatch.setenv("PYTHONPATH", "/controller/only")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root), pibake_chroot_env={"LD_PRELOAD": "libeatmydata.so", "TERM": None})
    popen = _fake_popen()
    with mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        rc, out, err = conn.exec_command("echo hi", in_data=b"payload")
    assert (rc, out, err) == (0, b"out", b"")
    argv = [a.decode() for a in popen.call_args.args[0]]
    assert argv == [
        shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin"),
        os.path.realpath(root),
        "/bin/sh",
        "-c",
        "echo hi",
    ]
    env = popen.call_args.kwargs["env"]
    assert env == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "DEBCONF_NONINTERACTIVE_SEEN": "true",
        "LD_PRELOAD": "libeatmydata.so",
    }
    popen.return_value.communicate.assert_called_once_with(b"payload")


def test_exec_runs_ansibles_shell_wrapper_directly(root, monkeypatch):
    """Ansible sends `/bin/sh -c '<cmd>'`; that shell is run directly instead of nesting a second one."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root))
    popen = _fake_popen()
    inner = "echo 'a b' && /usr/bin/python3 && sleep 0"
    with mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        conn.exec_command(f"/bin/sh -c {__import__('shlex').quote(inner)}")
        assert [a.decode() for a in popen.call_args.args[0]][2:] == ["/bin/sh", "-c", inner]
        # anything not exactly in that form keeps the outer shell
        conn.exec_command("/bin/sh -c 'true'; echo x")
        assert [a.decode() for a in popen.call_args.args[0]][2:] == ["/bin/sh", "-c", "/bin/sh -c 'true'; echo x"]


def test_exec_format_error_is_one_sentence(root, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root))
    popen = _fake_popen(126, b"", b"chroot: failed to run command '/bin/sh': Exec format error\n")
    with mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        with pytest.raises(AnsibleConnectionFailure, match="update-binfmts --enable qemu-aarch64"):
            conn.exec_command("true")


def test_command_failures_are_returned_not_raised(root, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root))
    popen = _fake_popen(127, b"", b"/bin/sh: 1: nope: not found\n")
    with mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        assert conn.exec_command("nope") == (127, b"", b"/bin/sh: 1: nope: not found\n")


def test_exec_needs_root(root, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    conn = make_connection(ansible_host=str(root))
    with pytest.raises(AnsibleConnectionFailure, match="needs root on the build host"):
        conn.exec_command("true")


def test_missing_chroot_binary(root, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root), pibake_chroot_exe="no-such-chroot")
    with pytest.raises(AnsibleConnectionFailure, match="no no-such-chroot command"):
        conn.exec_command("true")


@needs_real_chroot
def test_real_exec_pipelining_and_environment(root, monkeypatch):
    monkeypatch.setenv("VIRTUAL_ENV", "/work/main/.venv")
    conn = make_connection(ansible_host=str(root))
    rc, out, err = conn.exec_command("/bin/sh -c 'cat; echo; pwd; id -u'", in_data=b"piped module")
    assert (rc, err) == (0, b"")
    assert out.decode().splitlines() == ["piped module", "/", "0"]
    rc, out, dummy_err = conn.exec_command("env")
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["LC_ALL"] == "C.UTF-8"
    assert "VIRTUAL_ENV" not in env
    rc, out, dummy_err = conn.exec_command("cat /etc/shadow")  # the image's file, proving we are inside the root
    assert (rc, out) == (0, b"image shadow\n")
    assert conn.exec_command("exit 3")[0] == 3


# -- put_file / fetch_file: host side, never outside the root ----------------------------------------------------


def test_put_file_through_absolute_symlink_writes_inside_root(root, tmp_path):
    (root / "etc/x").symlink_to("/etc/shadow")
    secret = tmp_path / "outside/secret"
    (root / "etc/y").symlink_to(secret)  # a host-absolute path that exists on the host, not in the image
    (root / str(secret.parent).lstrip("/")).mkdir(parents=True)
    host_shadow = _digest("/etc/shadow") if os.access("/etc/shadow", os.R_OK) else None
    host_secret = _digest(secret)
    local = tmp_path / "local"
    local.write_text("new content\n")

    conn = make_connection(ansible_host=str(root))
    with mock.patch(f"{PLUGIN}.subprocess.Popen") as popen:
        conn.put_file(str(local), "/etc/x")
        conn.put_file(str(local), "/etc/y")
    popen.assert_not_called()  # no process in the image, no emulated dd

    assert (root / "etc/shadow").read_text() == "new content\n"
    assert (root / str(secret).lstrip("/")).read_text() == "new content\n"
    assert _digest(secret) == host_secret
    if host_shadow is not None:
        assert _digest("/etc/shadow") == host_shadow


def test_fetch_file_through_absolute_symlink_reads_inside_root(root, tmp_path):
    (root / "etc/x").symlink_to("/etc/shadow")
    (root / "etc/y").symlink_to(tmp_path / "outside/secret")
    conn = make_connection(ansible_host=str(root))
    dest = tmp_path / "fetched"
    with mock.patch(f"{PLUGIN}.subprocess.Popen") as popen:
        conn.fetch_file("/etc/x", str(dest))
        assert dest.read_text() == "image shadow\n"
        with pytest.raises(AnsibleError, match="does not exist in the image"):
            conn.fetch_file("/etc/y", str(tmp_path / "never"))
    popen.assert_not_called()
    assert not (tmp_path / "never").exists()


def test_put_file_missing_local_file(root, tmp_path):
    conn = make_connection(ansible_host=str(root))
    with pytest.raises(AnsibleFileNotFound):
        conn.put_file(str(tmp_path / "missing"), "/tmp/x")


def test_put_file_into_missing_directory_is_one_sentence(root, tmp_path):
    local = tmp_path / "local"
    local.write_text("x")
    conn = make_connection(ansible_host=str(root))
    with pytest.raises(AnsibleError, match=r"^Cannot write /root/\.ansible/tmp/x: directory .* does not exist"):
        conn.put_file(str(local), "/root/.ansible/tmp/x")


def test_put_file_mode_and_owner(root, tmp_path):
    local = tmp_path / "local"
    local.write_text("x")
    local.chmod(0o700)
    if AS_ROOT:
        os.chown(local, 65534, 65534)
    conn = make_connection(ansible_host=str(root))
    conn.put_file(str(local), "/tmp/new")
    st = (root / "tmp/new").stat()
    assert st.st_mode & 0o7777 == 0o644
    if AS_ROOT:
        assert (st.st_uid, st.st_gid) == (0, 0)


def test_close_and_reset(root):
    conn = make_connection(ansible_host=str(root))
    conn._connect()
    conn.reset()
    conn.close()
    assert not conn.connected


# -- the persistent interpreter ------------------------------------------------------------------------------------

FORKSERVER = "ansible_collections.pibake.image.plugins.module_utils._forkserver"
MODULE_CMD = "/bin/sh -c 'FOO=bar /usr/bin/python3 && sleep 0'"


def fake_payload(fqn="ansible.modules.command"):
    """The shape of an ansible-core 2.19 AnsiballZ payload, small."""
    import base64
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("ansible/__init__.py", "")
        archive.writestr("ansible/module_utils/basic.py", "X = 1\n")
        archive.writestr(fqn.replace(".", "/") + ".py", "print('{}')\n")
    return (
        b"#!/usr/bin/python3\n\nfrom __future__ import annotations\n\n_ANSIBALLZ_WRAPPER = True\n\n"
        b"def _ansiballz_main(**kw):\n    pass\n\n\n"
        b'if __name__ == "__main__":\n    _ansiballz_main(\n'
        b"ansible_module='ansible.legacy.command',\n"
        + f"module_fqn='{fqn}',\n".encode()
        + b"extensions={},\n"
        + b"zip_data='" + base64.b64encode(buf.getvalue()) + b"',\n)\n"
    )


def test_persistent_is_on_by_default():
    conn = make_connection()
    assert conn.get_option("pibake_chroot_persistent") is True
    assert conn.get_option("pibake_chroot_persistent_idle") == 60


def test_owner_is_the_playbook_process():
    conn = connection_loader.get("pibake.image.chroot", PlayContext(), StringIO(), ansible_playbook_pid="4242")
    assert conn._owner_pid == 4242
    assert make_connection()._owner_pid == os.getpid()


def test_a_pipelined_module_goes_to_the_persistent_interpreter(root, monkeypatch):
    from ansible_collections.pibake.image.plugins.module_utils import _forkserver

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root), pibake_chroot_env={"LD_PRELOAD": "libeatmydata.so"},
                           pibake_chroot_persistent=True)
    run = mock.MagicMock(return_value=_forkserver.Result(0, b"{}", b""))
    popen = _fake_popen()
    with mock.patch(f"{FORKSERVER}.run", run), mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        assert conn.exec_command(MODULE_CMD, in_data=fake_payload()) == (0, b"{}", b"")
    popen.assert_not_called()
    spec, task_env, payload, in_data = run.call_args.args
    assert spec.root == os.path.realpath(root)
    assert spec.launcher == [shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin"), os.path.realpath(root)]
    assert (spec.shell, spec.interpreter, spec.owner_pid, spec.idle) == ("/bin/sh", "/usr/bin/python3", os.getpid(), 60)
    assert spec.env["LD_PRELOAD"] == "libeatmydata.so" and "FOO" not in spec.env
    assert task_env == dict(spec.env, FOO="bar")
    assert payload.module_fqn == "ansible.modules.command" and in_data == fake_payload()


@pytest.mark.parametrize("case", ["off", "raw", "no-payload", "old-ansible", "startup-variable", "server-declines"])
def test_everything_else_takes_the_plain_path(root, monkeypatch, case):
    from ansible_collections.pibake.image.plugins.module_utils import _forkserver

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    options = {"ansible_host": str(root), "pibake_chroot_persistent": True}
    cmd, in_data = MODULE_CMD, fake_payload()
    if case == "off":
        options["pibake_chroot_persistent"] = False
    elif case == "raw":
        cmd = "/bin/sh -c 'cat /etc/os-release && sleep 0'"
    elif case == "no-payload":
        in_data = b"print('not an AnsiballZ payload')\n"
    elif case == "old-ansible":
        monkeypatch.setattr(__import__("sys").modules[PLUGIN], "ANSIBLE_VERSION", "2.20.0")
    elif case == "startup-variable":
        cmd = "/bin/sh -c 'LANG=de_DE.UTF-8 /usr/bin/python3 && sleep 0'"
    conn = make_connection(**options)
    run = mock.MagicMock(return_value=None if case == "server-declines" else _forkserver.Result(0, b"", b""))
    popen = _fake_popen(0, b"plain", b"")
    with mock.patch(f"{FORKSERVER}.run", run), mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        assert conn.exec_command(cmd, in_data=in_data) == (0, b"plain", b"")
    assert run.called == (case == "server-declines")
    popen.return_value.communicate.assert_called_once_with(in_data)


def test_a_failure_preparing_the_persistent_path_takes_the_plain_path(root, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root), pibake_chroot_persistent=True)
    popen = _fake_popen(0, b"plain", b"")
    with mock.patch(f"{FORKSERVER}.parse_payload", side_effect=RuntimeError("bug")), \
            mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        assert conn.exec_command(MODULE_CMD, in_data=fake_payload()) == (0, b"plain", b"")


def test_an_error_after_the_module_started_is_not_retried(root, monkeypatch):
    """run() raises only once the module runs; the plain path must not run it a second time."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root), pibake_chroot_persistent=True)
    popen = _fake_popen()
    with mock.patch(f"{FORKSERVER}.run", side_effect=OSError("lost")), \
            mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        with pytest.raises(OSError):
            conn.exec_command(MODULE_CMD, in_data=fake_payload())
    popen.assert_not_called()


def test_reset_stops_this_runs_servers(root):
    conn = make_connection(ansible_host=str(root))
    with mock.patch(f"{FORKSERVER}.stop_servers", return_value=1) as stop:
        conn.reset()
    stop.assert_called_once_with(root=os.path.realpath(root), owner_pid=os.getpid())


# -- housekeeping commands and the internal stat, on the build host -------------------------------------------------

MKDTEMP = ("/bin/sh -c '( umask 77 && mkdir -p \"` echo /run/pibake-ansible-tmp `\"&& mkdir \"` echo "
           "/run/pibake-ansible-tmp/ansible-tmp-1-2-3 `\" && echo ansible-tmp-1-2-3=\"` echo "
           "/run/pibake-ansible-tmp/ansible-tmp-1-2-3 `\" ) && sleep 0'")


def test_housekeeping_commands_run_on_the_build_host(root, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    conn = make_connection(ansible_host=str(root))
    assert conn.get_option("pibake_chroot_host_commands") is True
    popen = _fake_popen()
    with mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        assert conn.exec_command(MKDTEMP) == (
            0, b"ansible-tmp-1-2-3=/run/pibake-ansible-tmp/ansible-tmp-1-2-3\n", b"")
        assert (root / "run/pibake-ansible-tmp/ansible-tmp-1-2-3").is_dir()
        assert conn.exec_command("/bin/sh -c 'echo ~ && sleep 0'") == (0, b"/root\n", b"")
        assert conn.exec_command(
            "/bin/sh -c 'rm -f -r /run/pibake-ansible-tmp/ansible-tmp-1-2-3/ > /dev/null 2>&1 && sleep 0'"
        ) == (0, b"", b"")
    popen.assert_not_called()
    assert not (root / "run/pibake-ansible-tmp/ansible-tmp-1-2-3").exists()


@pytest.mark.parametrize("case", ["off", "other-shell", "cannot", "become"])
def test_housekeeping_commands_otherwise_run_in_the_image(root, monkeypatch, case):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    options = {"ansible_host": str(root)}
    cmd = MKDTEMP
    if case == "off":
        options["pibake_chroot_host_commands"] = False
    elif case == "other-shell":
        options["ansible_shell_executable"] = "/bin/env"  # exists in the fixture root; the command says /bin/sh
    elif case == "cannot":
        cmd = "/bin/sh -c 'chmod u+rwx /run/missing && sleep 0'"
    else:
        cmd = "/bin/sh -c 'sudo -H -S -n -u pi /bin/sh -c '\"'\"'echo BECOME-SUCCESS'\"'\"' && sleep 0'"
    conn = make_connection(**options)
    popen = _fake_popen(0, b"image", b"")
    with mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        assert conn.exec_command(cmd) == (0, b"image", b"")
    popen.assert_called_once()


def stat_payload(path, **extra):
    args = {"path": path, "follow": False, "get_checksum": True, "get_size": False, "checksum_algorithm": "sha1",
            "_ansible_no_log": False, "_ansible_ignore_unknown_opts": True, **extra}
    literal = repr(__import__("json").dumps({"ANSIBLE_MODULE_ARGS": args}))
    return fake_payload("ansible.modules.stat").replace(b"extensions={},\n", f"params={literal},\nextensions={{}},\n"
                                                        .encode())


def test_the_internal_stat_is_answered_on_the_build_host(root, monkeypatch):
    import json

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    conn = make_connection(ansible_host=str(root))
    run = mock.MagicMock(return_value=None)
    popen = _fake_popen()
    with mock.patch(f"{FORKSERVER}.run", run), mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        rc, out, err = conn.exec_command("/bin/sh -c '/usr/bin/python3 && sleep 0'",
                                         in_data=stat_payload("/etc/shadow"))
    run.assert_not_called()
    popen.assert_not_called()
    result = json.loads(out)["stat"]
    assert (rc, err) == (0, b"")
    assert result["isreg"] and result["checksum"] == __import__("hashlib").sha1(b"image shadow\n").hexdigest()


@pytest.mark.parametrize("case", ["off", "user-task", "become"])
def test_any_other_stat_runs_the_module(root, monkeypatch, case):
    from ansible_collections.pibake.image.plugins.module_utils import _forkserver

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    options = {"ansible_host": str(root)}
    cmd, in_data = "/bin/sh -c '/usr/bin/python3 && sleep 0'", stat_payload("/etc/shadow")
    if case == "off":
        options["pibake_chroot_host_commands"] = False
    elif case == "user-task":
        in_data = stat_payload("/etc/shadow", _ansible_ignore_unknown_opts=False)
    else:
        cmd = "/bin/sh -c 'sudo -H -S -n -u pi /bin/sh -c '\"'\"'/usr/bin/python3'\"'\"' && sleep 0'"
    conn = make_connection(**options)
    run = mock.MagicMock(return_value=_forkserver.Result(0, b"module", b""))
    popen = _fake_popen(0, b"module", b"")
    with mock.patch(f"{FORKSERVER}.run", run), mock.patch(f"{PLUGIN}.subprocess.Popen", popen):
        assert conn.exec_command(cmd, in_data=in_data) == (0, b"module", b"")
