# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The persistent interpreter (``_forkserver`` + ``_forkserver_stub``), run natively: no chroot, no root needed.

The server stub runs under every Python from 3.9 to 3.13 found on this machine (pyenv installs, the system
``python3``), on real AnsiballZ payloads built by ansible-core's own ``modify_module``. Each result is compared
with what the plain path gives for the same payload: ``<sh> -c '<python> && sleep 0'`` with the payload on stdin.
"""

from __future__ import annotations

import ast
import base64
import glob
import io
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _forkserver as fs

import ansible
from ansible.executor.module_common import modify_module
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar

ANSIBLE_MODULES = os.path.join(os.path.dirname(ansible.__file__), "modules")
COLLECTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 4, ".ansible", "collections")


@pytest.fixture(scope="module", autouse=True)
def _plugin_loader():
    """modify_module resolves module_utils through Ansible's collection loader."""
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    if AnsibleCollectionConfig.collection_finder is None:
        for name in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")]:
            del sys.modules[name]
        from ansible.plugins.loader import init_plugin_loader

        init_plugin_loader([os.path.normpath(COLLECTIONS)])


BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TERM": "dumb"}
VOLATILE = ("start", "end", "delta")


def _interpreters():
    found = []
    for version in ("3.9", "3.10", "3.11", "3.12", "3.13"):
        paths = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
        if paths:
            found.append(paths[-1])
    if os.path.exists("/usr/bin/python3"):
        found.append("/usr/bin/python3")
    return found


INTERPRETERS = _interpreters()
DEFAULT_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else INTERPRETERS[0]


def build_payload(module: str, args: dict, path: str = "", check_mode: bool = False, no_log: bool = False) -> bytes:
    """A real AnsiballZ payload, as the connection receives it as in_data."""
    module_args = dict(args, _ansible_check_mode=check_mode, _ansible_no_log=no_log)
    built = modify_module(
        module_name=f"ansible.legacy.{module}",
        module_path=path or os.path.join(ANSIBLE_MODULES, f"{module}.py"),
        module_args=module_args,
        templar=Templar(loader=DataLoader()),
        task_vars={"ansible_python_interpreter": "/usr/bin/python3"},
        module_compression="ZIP_DEFLATED",
    )
    return built.b_module_data


def plain(interpreter: str, payload: bytes, env: dict) -> tuple:
    proc = subprocess.run(["/bin/sh", "-c", f"{interpreter} && sleep 0"], input=payload, env=env, cwd="/",
                          capture_output=True, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def normalized(stdout: bytes) -> dict:
    result = json.loads(stdout)
    for key in VOLATILE:
        result.pop(key, None)
    return result


@pytest.fixture
def state_dir(tmp_path):
    path = tmp_path / "state"
    yield str(path)
    fs.stop_servers(str(path))


def make_spec(state_dir: str, interpreter: str = DEFAULT_PYTHON, owner: int = 0, idle: float = 30,
              env: dict = None) -> fs.ServerSpec:
    return fs.ServerSpec(root="/", launcher=[], shell="/bin/sh", interpreter=interpreter, env=dict(env or BASE_ENV),
                         owner_pid=owner or os.getpid(), idle=idle, state_dir=state_dir)


def through_server(spec: fs.ServerSpec, payload: bytes, env: dict = None) -> fs.Result:
    parsed = fs.parse_payload(payload)
    assert parsed is not None
    result = fs.run(spec, dict(env or spec.env), parsed, payload)
    assert result is not None, f"the server did not run the task: {fs.LAST_REASON[0]}"
    return result


def server_pid(spec: fs.ServerSpec) -> int:
    reply = fs.request(spec, "ping")
    assert reply is not None
    return int(reply["pid"])


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # reap it if it is our child (the server started by this test process)
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    return False


# -- which commands and payloads may take the persistent path --------------------------------------------------------


@pytest.mark.parametrize("cmd, expected", [
    ("/bin/sh -c '/usr/bin/python3 && sleep 0'", ("/bin/sh", {}, "/usr/bin/python3")),
    ("/bin/sh -c 'FOO=bar /usr/bin/python3.11 && sleep 0'", ("/bin/sh", {"FOO": "bar"}, "/usr/bin/python3.11")),
    ("/bin/bash -c 'A='\"'\"'x y'\"'\"' B=2 /usr/bin/python3 && sleep 0'",
     ("/bin/bash", {"A": "x y", "B": "2"}, "/usr/bin/python3")),
])
def test_module_commands_are_recognized(cmd, expected):
    assert fs.parse_module_command(cmd) == expected


@pytest.mark.parametrize("cmd", [
    "echo hi",  # raw
    "/bin/sh -c 'echo ~root && sleep 0'",
    "/bin/sh -c '( umask 77 && mkdir -p \"` echo /root/.ansible/tmp `\" ) && sleep 0'",
    "/bin/sh -c '/usr/bin/python3 /root/.ansible/tmp/x/AnsiballZ_command.py && sleep 0'",  # not pipelined
    "/bin/sh -c 'cd /tmp && /usr/bin/python3 && sleep 0'",
    "/bin/sh -c '/usr/bin/env python3 && sleep 0'",
    "/bin/sh -c '/usr/bin/python3'",  # no `&& sleep 0`
    "/bin/sh -c '/usr/bin/python3 && sleep 0; rm -rf /x'",
    "/bin/sh -c 'FOO=$(id) /usr/bin/python3 && sleep 0'",  # a word the shell would expand
    "/bin/sh -c 'FOO=\"a b\" /usr/bin/python3 && sleep 0'",  # quoted otherwise than Ansible quotes
    "/bin/sh -c '/usr/bin/python3 -X dev && sleep 0'",
    "/bin/sh -c '/usr/bin/perl && sleep 0'",
    "sh -c '/usr/bin/python3 && sleep 0'",  # relative shell
    # become to another user: sudo around the command
    "/bin/sh -c 'sudo -H -S -n  -u bob /bin/sh -c '\"'\"'echo BECOME-SUCCESS-x ; /usr/bin/python3'\"'\"' && sleep 0'",
    "/bin/sh -c " + shlex.quote("su  bob -c " + shlex.quote("/bin/sh -c " + shlex.quote("/usr/bin/python3"))
                                + " && sleep 0"),
    "/bin/sh -c '/usr/bin/python3 && sleep 0' extra",
])
def test_other_commands_are_refused(cmd):
    assert fs.parse_module_command(cmd) is None


def test_payload_is_read():
    payload = build_payload("command", {"_raw_params": "echo hi"})
    parsed = fs.parse_payload(payload)
    assert parsed is not None
    assert parsed.module_fqn == "ansible.modules.command"
    assert parsed.module_file == "ansible/modules/command.py"
    assert "ansible/module_utils/basic.py" in parsed.manifest
    assert parsed.module_file not in parsed.manifest  # the module itself is not part of the module_utils set
    start, end = parsed.zip_span
    archive = zipfile.ZipFile(io.BytesIO(base64.b64decode(payload[start:end])))
    import hashlib

    assert parsed.manifest["ansible/module_utils/basic.py"] == hashlib.sha256(
        archive.read("ansible/module_utils/basic.py")).hexdigest()
    assert payload[parsed.call:].startswith(b'if __name__ == "__main__":')
    # Two modules share their module_utils digests where they bundle the same files.
    other = fs.parse_payload(build_payload("stat", {"path": "/"}))
    assert other.manifest["ansible/module_utils/basic.py"] == parsed.manifest["ansible/module_utils/basic.py"]


@pytest.mark.parametrize("mangle", [
    lambda p: b"",
    lambda p: b"#!/bin/sh\necho old-style module\n",
    lambda p: p.replace(b"\nextensions={},\n", b"\nextensions={'_coverage': {}},\n"),  # coverage/debugger on
    lambda p: p.replace(b"\n_ANSIBALLZ_WRAPPER = True\n", b"\n"),
    lambda p: p.replace(b"zip_data='", b"zip_data='!!"),
    lambda p: p + b'\nif __name__ == "__main__":\n    _ansiballz_main(\n)\n',
])
def test_unexpected_payloads_are_refused(mangle):
    assert fs.parse_payload(mangle(build_payload("command", {"_raw_params": "true"}))) is None


def test_only_ansible_core_2_19_is_supported():
    assert fs.supported_ansible("2.19.14")
    assert fs.supported_ansible("2.19.0rc1")
    assert not fs.supported_ansible("2.20.0")
    assert not fs.supported_ansible("2.18.7")


def test_startup_variables_decide_compatibility():
    server = dict(BASE_ENV, LD_PRELOAD="libeatmydata.so")
    assert fs.env_compatible(server, {"FOO": "bar", "PATH": "/bin"})
    assert fs.env_compatible(server, {"LANG": "C.UTF-8", "LD_PRELOAD": "libeatmydata.so"})
    for changed in ({"LANG": "de_DE.UTF-8"}, {"LC_MESSAGES": "C"}, {"PYTHONPATH": "/x"}, {"LD_PRELOAD": ""},
                    {"TZ": "UTC"}, {"HOME": "/home/x"}, {"QEMU_CPU": "max"}):
        assert not fs.env_compatible(server, changed), changed


def test_exit_codes_are_those_of_the_shell():
    assert fs.exit_code(0) == 0
    assert fs.exit_code(3 << 8) == 3
    assert fs.exit_code(signal.SIGKILL) == 128 + signal.SIGKILL


def test_stub_is_python_3_9_syntax():
    with open(fs.STUB_PATH, encoding="utf-8") as handle:
        ast.parse(handle.read(), feature_version=(3, 9))


# -- the server, natively ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpreter", INTERPRETERS, ids=lambda p: p.split("/")[-1] + ":" + p.split("/")[-3])
def test_results_match_the_plain_path_on_every_python(interpreter, state_dir):
    spec = make_spec(state_dir, interpreter)
    env = dict(BASE_ENV, FOO="bar")
    cases = [
        build_payload("command", {"_raw_params": "echo hi"}),
        build_payload("command", {"_raw_params": "sh -c 'echo err >&2; exit 3'", "_uses_shell": False}),
        build_payload("command", {"_raw_params": "env", "_uses_shell": False}),
        build_payload("command", {"_raw_params": "touch /nonexistent/x"}, check_mode=True),
        build_payload("command", {"_raw_params": "echo secret"}, no_log=True),
        build_payload("stat", {"path": "/etc/passwd"}),
        build_payload("command", {"_raw_params": "", "argv": None}),  # a module failure (no command given)
    ]
    for payload in cases:
        expected = plain(interpreter, payload, env)
        got = through_server(spec, payload, env)
        assert got.rc == expected[0], (got, expected)
        assert got.stderr == expected[2]
        want, have = normalized(expected[1]), normalized(got.stdout)
        if "stat" in have:  # the atime of /etc/passwd may move between the two runs
            for result in (want, have):
                result["stat"].pop("atime", None)
        if want.get("cmd") == ["env"]:
            # Same variables; their order is the shell's (a hash table in dash) and may differ.
            assert sorted(want.pop("stdout").splitlines()) == sorted(have.pop("stdout").splitlines())
        assert have == want
    reply = fs.request(spec, "ping")
    assert len(reply["zygotes"]) == 1, reply  # one warm interpreter served both modules
    version = interpreter.rsplit("python", 1)[1]
    if version.count(".") == 1:
        assert reply["python"][:2] == [int(x) for x in version.split(".")]


def test_one_server_per_run_and_the_first_task_starts_it(state_dir):
    spec = make_spec(state_dir)
    payload = build_payload("command", {"_raw_params": "true"})
    first = through_server(spec, payload)
    second = through_server(spec, payload)
    assert first.server_started and not second.server_started
    assert first.rc == second.rc == 0
    assert fs.servers(state_dir)[0][1]["root"] == "/"


def test_different_module_utils_never_share_a_warm_interpreter(state_dir):
    """A payload whose basic.py differs (another ansible-core) gets its own zygote, and runs its own code."""
    spec = make_spec(state_dir)
    payload = build_payload("command", {"_raw_params": "true"})
    through_server(spec, payload)
    parsed = fs.parse_payload(payload)
    start, end = parsed.zip_span
    source = zipfile.ZipFile(io.BytesIO(base64.b64decode(payload[start:end])))
    patched = io.BytesIO()
    with zipfile.ZipFile(patched, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "ansible/module_utils/basic.py":  # every result says which basic made it
                data += (b"\n_exit = AnsibleModule.exit_json\n"
                         b"def _patched(self, **kw):\n    _exit(self, patched=True, **kw)\n"
                         b"AnsibleModule.exit_json = _patched\n")
            out.writestr(info, data)
    other = payload[:start] + base64.b64encode(patched.getvalue()) + payload[end:]
    result = through_server(spec, other)
    assert result.rc == 0 and json.loads(result.stdout)["patched"] is True
    assert len(fs.request(spec, "ping")["zygotes"]) == 2
    assert json.loads(through_server(spec, payload).stdout).get("patched") is None  # the first zygote, original


@pytest.mark.parametrize("respawn", [False, True], ids=["traceback", "respawn"])
def test_tracebacks_and_respawn_match_the_plain_path(state_dir, tmp_path, respawn):
    """Source lines in tracebacks (linecache through the loaders) and respawn_module (which reads the zip and
    inspect.getsource()s ansible-core's respawn wrapper) behave as in a plain run."""
    name = f"pibake_respawn_{respawn}".lower()  # modify_module caches the zip by module name
    module = tmp_path / f"{name}.py"
    module.write_text(
        "from ansible.module_utils.basic import AnsibleModule\n"
        "from ansible.module_utils.common.respawn import has_respawned, respawn_module\n"
        "import os, sys, traceback\n"
        "os.environ.setdefault('PIBAKE_T_PID', str(os.getpid()))\n"
        "def boom():\n"
        "    raise ValueError('boom line')\n"
        "def main():\n"
        "    m = AnsibleModule(argument_spec={})\n"
        f"    if {respawn} and not has_respawned():\n"
        "        respawn_module(sys.executable)\n"
        "    try:\n"
        "        boom()\n"
        "    except ValueError:\n"
        "        tb = traceback.format_exc()\n"
        "    m.exit_json(respawned=has_respawned(), source_line=\"raise ValueError('boom line')\" in tb,\n"
        "                frames=tb.count('File '), pid_is_main=os.getpid() == int(os.environ['PIBAKE_T_PID']))\n"
        "main()\n"
    )
    payload = build_payload(name, {}, path=str(module))
    for interpreter in sorted({DEFAULT_PYTHON, INTERPRETERS[-2] if len(INTERPRETERS) > 1 else DEFAULT_PYTHON}):
        spec = make_spec(state_dir, interpreter)
        expected = plain(interpreter, payload, BASE_ENV)
        got = through_server(spec, payload)
        assert (got.rc, got.stderr) == (expected[0], expected[2]), got
        assert json.loads(got.stdout) == json.loads(expected[1])
        # respawned: the result comes from another process than the one the payload started in
        assert json.loads(got.stdout)["pid_is_main"] is not respawn


def test_an_uncaught_exception_is_reported_like_python_does(state_dir, tmp_path):
    """A payload that dies outside the module's own error handling: same stderr traceback text, rc 1."""
    spec = make_spec(state_dir)
    payload = build_payload("command", {"_raw_params": "true"})
    through_server(spec, payload)  # warm
    broken = payload.replace(b"\n    import os\n", b"\n    import os\n    raise SystemError('payload broke')\n", 1)
    expected = plain(DEFAULT_PYTHON, broken, BASE_ENV)
    got = through_server(spec, broken)
    assert got.rc == expected[0] == 1
    assert got.stdout == expected[1] == b""
    assert got.stderr == expected[2]
    assert got.stderr.endswith(b"SystemError: payload broke\n")


def test_concurrent_tasks(state_dir):
    spec = make_spec(state_dir)
    payload = build_payload("command", {"_raw_params": "sleep 1"})
    through_server(spec, payload)
    results = []
    threads = [threading.Thread(target=lambda: results.append(through_server(spec, payload))) for dummy in range(3)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.rc for r in results] == [0, 0, 0]
    assert time.monotonic() - start < 2.9  # they ran side by side


# -- life cycle and fallbacks -----------------------------------------------------------------------------------------


def test_stops_when_told(state_dir):
    spec = make_spec(state_dir)
    through_server(spec, build_payload("command", {"_raw_params": "true"}))
    pid = server_pid(spec)
    assert fs.stop_servers(state_dir, root="/", owner_pid=os.getpid()) == 1
    assert wait_gone(pid)
    assert fs.request(spec, "ping") is None


def test_stops_when_idle(state_dir):
    spec = make_spec(state_dir, idle=1)
    through_server(spec, build_payload("command", {"_raw_params": "true"}))
    assert wait_gone(server_pid(spec), timeout=10)


def test_stops_when_the_playbook_process_dies(state_dir):
    owner = subprocess.Popen(["sleep", "300"])
    try:
        spec = make_spec(state_dir, owner=owner.pid, idle=300)
        through_server(spec, build_payload("command", {"_raw_params": "true"}))
        pid = server_pid(spec)
        owner.kill()
        owner.wait()
        assert wait_gone(pid, timeout=10)
    finally:
        owner.kill()


def test_a_task_running_is_not_cut_by_the_idle_timeout(state_dir):
    spec = make_spec(state_dir, idle=1)
    result = through_server(spec, build_payload("command", {"_raw_params": "sleep 3"}))
    assert result.rc == 0


def test_an_interpreter_that_cannot_start_means_the_plain_path(state_dir):
    spec = make_spec(state_dir, interpreter="/nonexistent/python3")
    payload = build_payload("command", {"_raw_params": "true"})
    parsed = fs.parse_payload(payload)
    assert fs.run(spec, dict(spec.env), parsed, payload) is None
    assert os.path.exists(spec.path(".failed"))
    start = time.monotonic()
    assert fs.run(spec, dict(spec.env), parsed, payload) is None  # no second attempt
    assert time.monotonic() - start < 0.5


def test_a_dead_server_is_replaced(state_dir):
    spec = make_spec(state_dir)
    payload = build_payload("command", {"_raw_params": "true"})
    through_server(spec, payload)
    pid = server_pid(spec)
    os.kill(pid, signal.SIGKILL)
    assert wait_gone(pid)
    result = through_server(spec, payload)
    assert result.rc == 0 and result.server_started
    assert server_pid(spec) != pid


def test_a_refusal_before_the_start_means_the_plain_path(state_dir):
    """The server answers `fallback` (here: another protocol version) before anything ran: run() gives None."""
    spec = make_spec(state_dir)
    payload = build_payload("command", {"_raw_params": "true"})
    through_server(spec, payload)
    parsed = fs.parse_payload(payload)
    old = fs.PROTOCOL
    try:
        fs.PROTOCOL = 0
        assert fs.run(spec, dict(spec.env), parsed, payload) is None
    finally:
        fs.PROTOCOL = old
    assert not os.path.exists(spec.path(".failed"))  # the server is fine: later tasks still use it
    assert through_server(spec, payload).rc == 0


def test_a_server_lost_during_the_task_never_reruns_it(state_dir, tmp_path):
    """Once the module started, losing the server means an unknown status, never a second run."""
    marker = tmp_path / "runs"
    spec = make_spec(state_dir)
    payload = build_payload("command", {"_raw_params": f"sh -c 'echo run >> {marker}; sleep 2; echo done'"})
    through_server(spec, build_payload("command", {"_raw_params": "true"}))
    master = server_pid(spec)
    zygotes = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False).stdout.split()
    timer = threading.Timer(1.0, lambda: [os.kill(int(z), signal.SIGKILL) for z in zygotes])
    timer.start()
    try:
        result = fs.run(spec, dict(spec.env), fs.parse_payload(payload), payload)
    finally:
        timer.cancel()
    assert result is not None
    assert marker.read_text() == "run\n"
    assert json.loads(result.stdout)["stdout"] == "done"  # the child finished its work and printed its result
    assert result.rc == 1 and result.stderr.endswith(fs.LOST_STATUS)


def test_a_server_in_another_root_runs_nothing(state_dir, tmp_path):
    """The server checks that its / is the root it was started for (a directory recreated at the same path is
    another root): here it is not, so it runs no task and the task goes the plain way."""
    other = tmp_path / "other"
    other.mkdir()
    spec = fs.ServerSpec(root=str(other), launcher=[], shell="/bin/sh", interpreter=DEFAULT_PYTHON,
                         env=dict(BASE_ENV), owner_pid=os.getpid(), state_dir=state_dir)
    payload = build_payload("command", {"_raw_params": "true"})
    assert fs.run(spec, dict(spec.env), fs.parse_payload(payload), payload) is None
    assert spec.key() != make_spec(state_dir).key()


def test_no_file_descriptor_leaks_into_the_module(state_dir, tmp_path):
    """The module's process has the descriptors a plain python3 has: stdin, stdout, stderr."""
    module = tmp_path / "pibake_fds.py"
    module.write_text(
        "import os\n"
        "from ansible.module_utils.basic import AnsibleModule\n"
        "m = AnsibleModule(argument_spec={})\n"
        "fds = [int(fd) for fd in os.listdir('/proc/self/fd')]\n"
        "m.exit_json(fds=sorted(fd for fd in fds if os.path.exists('/proc/self/fd/%d' % fd)))\n"
    )
    payload = build_payload("pibake_fds", {}, path=str(module))
    spec = make_spec(state_dir)
    for dummy in range(2):  # the first run compiles, the second takes the cached code
        got = json.loads(through_server(spec, payload).stdout)
        assert got["fds"] == json.loads(plain(DEFAULT_PYTHON, payload, BASE_ENV)[1])["fds"]


def test_a_long_state_dir(tmp_path):
    """Socket paths longer than an AF_UNIX address holds still work."""
    state_dir = str(tmp_path / ("d" * 90) / "state")
    spec = make_spec(state_dir)
    assert len(spec.path(".sock")) > 108
    try:
        assert through_server(spec, build_payload("command", {"_raw_params": "true"})).rc == 0
        assert fs.request(spec, "ping") is not None
    finally:
        fs.stop_servers(state_dir)


def test_stale_sockets_are_swept(state_dir):
    os.makedirs(state_dir)
    stale = os.path.join(state_dir, "0" * 32 + ".sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(stale)
    listener.close()  # nobody listens any more
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    spec = make_spec(state_dir)
    through_server(spec, build_payload("command", {"_raw_params": "true"}))
    assert not os.path.exists(stale)
    assert os.path.exists(spec.path(".sock"))


def test_the_bootstrap_reads_the_stub(tmp_path):
    """BOOT runs the stub text from stdin with CONFIG; a stub that only prints proves the plumbing."""
    shutil.copy(fs.STUB_PATH, tmp_path / "stub.py")
    config = {"stub": "import sys\nsys.stdout.write(repr(sorted(CONFIG)))\n", "x": 1}
    proc = subprocess.run([DEFAULT_PYTHON, "-c", fs.BOOT], input=json.dumps(config).encode(), capture_output=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"['x']"
