# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers

from __future__ import annotations

DOCUMENTATION = r"""
name: chroot
short_description: Run tasks inside a mounted image root on the build host
description:
  - Runs commands inside a root filesystem mounted on the build host (usually an image attached by
    M(pibake.image.image_session)) with the host's C(chroot) binary, as root.
  - Module payloads are piped to the interpreter (pipelining), so a task costs one process start in the image.
  - C(put_file) and C(fetch_file) run on the build host, with no process inside the image. Every path is resolved
    one component at a time below the image root; the image's symlinks are followed as the image sees them
    (absolute targets restart at the image root, C(..) never climbs above it), so a link such as
    C(/etc/x -> /etc/shadow) in the image reads or writes the image's C(/etc/shadow), never the build host's.
  - Files are written to a temporary name in the destination directory and renamed into place. A new file becomes
    C(root:root) with mode C(0644); an existing file keeps its owner and mode.
  - Commands run with a clean environment, nothing is inherited from the controller (no virtualenv, no proxy
    variables); see O(pibake_chroot_env).
  - Pipelined Python modules run through a persistent interpreter inside the image (see
    O(pibake_chroot_persistent)), which keeps Ansible's module_utils imported between tasks; under qemu-user this
    takes a module run from seconds to a fraction of a second.
author: pibake developers (@pibake)
version_added: 0.1.0
notes:
  - The controller must run as root (C(chroot) needs it). Commands already run as root inside the image, so
    C(become) to root is a no-op. C(become) to another user is passed to the image's own C(su)/C(sudo), which must
    then be installed in the image.
  - Foreign-architecture images (arm64 on an x86_64 host) need qemu-user binfmt registered on the host.
  - Setting C(ansible_python_interpreter=/usr/bin/python3) for the image host skips interpreter discovery.
options:
  remote_addr:
    description:
      - Path of the mounted image root on the build host.
      - Used when O(pibake_chroot_root) is not set.
    type: string
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  pibake_chroot_root:
    description:
      - Path of the mounted image root on the build host. Takes precedence over O(remote_addr), so the inventory
        host can keep a readable name.
    type: path
    vars:
      - name: pibake_chroot_root
  executable:
    description:
      - Shell inside the image that runs each command, as C(chroot <root> <executable> -c <command>).
      - Must be an absolute path inside the image; the image's symlinks (usrmerge) are followed.
    type: string
    default: /bin/sh
    ini:
      - section: defaults
        key: executable
    env:
      - name: ANSIBLE_EXECUTABLE
    vars:
      - name: ansible_shell_executable
  pibake_chroot_exe:
    description:
      - The build host's C(chroot) binary, a name looked up in the host's standard C(PATH) or an absolute path.
    type: string
    default: chroot
    env:
      - name: PIBAKE_CHROOT_EXE
    vars:
      - name: pibake_chroot_exe
  pibake_chroot_env:
    description:
      - Extra environment variables for every command run in the image, merged over the defaults
        C(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin), C(HOME=/root), C(LC_ALL=C.UTF-8),
        C(LANG=C.UTF-8), C(DEBIAN_FRONTEND=noninteractive), C(DEBCONF_NONINTERACTIVE_SEEN=true) and C(TERM=dumb).
      - A value of V(null) removes a default.
      - "For example V({'LD_PRELOAD': 'libeatmydata.so'}) during a build makes dpkg skip its fsync calls."
    type: dict
    default: {}
    vars:
      - name: pibake_chroot_env
  pipelining:
    description:
      - Pipe module payloads to the interpreter's stdin instead of writing them into the image first.
      - On by default here, unlike other connections, because a chroot has no C(requiretty) problem; each task
        then costs one process start in the image.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PIPELINING
    ini:
      - section: defaults
        key: pipelining
      - section: connection
        key: pipelining
    vars:
      - name: ansible_pipelining
  pibake_chroot_persistent:
    description:
      - Run pipelined Python modules through a persistent interpreter inside the image instead of starting the
        image's Python for every task.
      - The image's own interpreter is started once per image root and C(ansible-playbook) run, imports Ansible's
        module_utils once, and forks a fresh process for each task, with the task's environment and the same
        stdin, stdout, stderr and exit status as a plain run. It stops when idle for
        O(pibake_chroot_persistent_idle) seconds, when the playbook process ends, on a C(reset_connection) meta
        task, and when the image session is detached. Nothing is written into the image.
      - Only the exact pipelined module command takes this path (not C(raw), C(script), async tasks, C(become) to
        another user, or tasks whose environment changes variables Python reads at start-up such as C(LANG),
        C(LC_*), C(PYTHON*), C(LD_*)). Whenever the persistent interpreter cannot run a task, the task runs the
        plain way.
      - Needs ansible-core 2.19; with other versions every task runs the plain way.
    type: boolean
    default: true
    env:
      - name: PIBAKE_CHROOT_PERSISTENT
    ini:
      - section: pibake
        key: chroot_persistent
    vars:
      - name: pibake_chroot_persistent
  pibake_chroot_host_commands:
    description:
      - Do the housekeeping shell commands of Ansible's action plugins on the build host instead of starting the
        image's shell for each (creating and removing the remote temporary directory, C(chmod) of the files put
        there, C(~user) expansion and C(test -e)). Under qemu-user each of them otherwise costs a shell start
        (0.1 to 0.3 s), several per C(copy) or C(template) task.
      - The C(stat) those action plugins run internally on their destination (C(ActionBase._execute_remote_stat),
        before C(copy), C(template), C(fetch), C(assemble), C(unarchive)) is answered on the build host too, with the
        result the module would print; a C(stat) task of a playbook always runs the module.
      - Only the exact commands ansible-core's C(sh) shell plugin builds are done this way, as root, with image
        paths resolved as the image sees them; anything else (C(become) wrappers, other modes, paths the shell
        would expand), and anything the build host cannot do exactly as the image's tools would (an error, users
        the image resolves through something other than its files, file attributes other than C(e)), runs in the
        image as before, so error messages still come from the image's own tools.
    type: boolean
    default: true
    env:
      - name: PIBAKE_CHROOT_HOST_COMMANDS
    ini:
      - section: pibake
        key: chroot_host_commands
    vars:
      - name: pibake_chroot_host_commands
  pibake_chroot_persistent_idle:
    description:
      - Seconds without a task after which the persistent interpreter stops (the next task starts a new one).
    type: float
    default: 60
    env:
      - name: PIBAKE_CHROOT_PERSISTENT_IDLE
    ini:
      - section: pibake
        key: chroot_persistent_idle
    vars:
      - name: pibake_chroot_persistent_idle
"""

EXAMPLES = r"""
# Inventory line for an image attached at /srv/build/root (a plain rootfs directory works the same way):
#   pibake_image ansible_connection=pibake.image.chroot pibake_chroot_root=/srv/build/root
#       ansible_python_interpreter=/usr/bin/python3

# Ad hoc, the host name being the root path:
#   ansible -i /srv/build/root, -c pibake.image.chroot all -m ansible.builtin.command -a 'cat /etc/os-release'

- name: Customize the attached image
  hosts: pibake_image
  connection: pibake.image.chroot
  gather_facts: false
  vars:
    pibake_chroot_env:
      LD_PRELOAD: libeatmydata.so
  tasks:
    - name: Write the image's hostname
      ansible.builtin.copy:
        content: "ourbox\n"
        dest: /etc/hostname
        mode: "0644"
"""

import os
import shlex
import shutil
import subprocess
import typing as t

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_native, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.release import __version__ as ANSIBLE_VERSION
from ansible.utils.display import Display

from ansible_collections.pibake.image.plugins.module_utils import _chroot_shell, _chroot_stat, _forkserver

from ansible_collections.pibake.image.plugins.module_utils._chroot_paths import (
    executable_in_root,
    fetch_from_root,
    put_into_root,
    real_root,
)
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

display = Display()

# Where the build host's own tools are looked up; the controller's PATH (a virtualenv, say) plays no part.
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The whole environment of a command in the image (before pibake_chroot_env).
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "DEBCONF_NONINTERACTIVE_SEEN": "true",
    "TERM": "dumb",
}


def build_env(extra: t.Optional[t.Mapping[str, t.Any]]) -> dict:
    """BASE_ENV with ``extra`` merged over it; a None value removes a variable."""
    env = dict(BASE_ENV)
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(str(key), None)
        else:
            env[str(key)] = str(value)
    return env


def chroot_argv(chroot_cmd: str, root: str, executable: str, cmd: str) -> list:
    """The host argv that runs ``cmd`` in ``root``.

    Ansible already wraps module commands as ``<executable> -c '<command>'``; when ``cmd`` is exactly that, the
    wrapper's shell is run directly instead of starting a second shell around it (one process start fewer, which
    under emulation is measurable). Anything else runs as ``<executable> -c <cmd>``.
    """
    try:
        words = shlex.split(cmd)
    except ValueError:
        words = []
    if (
        len(words) == 3
        and words[1] == "-c"
        and words[0].startswith("/")
        and cmd == f"{words[0]} -c {shlex.quote(words[2])}"
    ):
        return [chroot_cmd, root, words[0], "-c", words[2]]
    return [chroot_cmd, root, executable, "-c", cmd]


class Connection(ConnectionBase):
    """Commands through the host's chroot, file transfers on the host side below the image root."""

    transport = "pibake.image.chroot"
    has_pipelining = True
    has_tty = False
    default_user = "root"

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        self._checked: dict = {}  # (root option, executable) -> canonical root, checked once per connection
        self._chroot_cmd: t.Optional[str] = None
        # The ansible-playbook process (a task's worker is its child): the persistent interpreter ends with it.
        owner = kwargs.get("ansible_playbook_pid")
        self._owner_pid = int(owner) if owner and str(owner).isdigit() else os.getpid()

    # -- helpers -------------------------------------------------------------------------------------------------

    def _root_option(self) -> str:
        root = self.get_option("pibake_chroot_root")
        if not root:
            root = self.get_option("remote_addr") or self._play_context.remote_addr
        return to_text(root or "")

    def _root(self) -> str:
        """Canonical host path of the image root, checked to hold the executable (once per value)."""
        given = self._root_option()
        executable = self.get_option("executable")
        key = (given, executable)
        if key not in self._checked:
            try:
                root = real_root(given)
                executable_in_root(root, executable)
            except PibakeError as err:
                raise AnsibleConnectionFailure(str(err)) from None
            self._checked[key] = root
        return self._checked[key]

    def _chroot_binary(self) -> str:
        if self._chroot_cmd is None:
            name = self.get_option("pibake_chroot_exe")
            found = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name, path=HOST_PATH)
            if not found:
                raise AnsibleConnectionFailure(
                    f"The build host has no {name} command; install coreutils or set pibake_chroot_exe to its path."
                )
            self._chroot_cmd = found
        return self._chroot_cmd

    # -- ConnectionBase ------------------------------------------------------------------------------------------

    def _connect(self) -> "Connection":
        root = self._root()
        if not self._connected:
            display.vvv(f"ESTABLISH PIBAKE CHROOT CONNECTION FOR USER: root IN {root}", host=root)
            self._connected = True
        return self

    def exec_command(self, cmd: str, in_data: t.Optional[bytes] = None, sudoable: bool = True) -> tuple:
        """Run ``cmd`` inside the image root; ``in_data`` goes to its stdin (pipelining)."""
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if os.geteuid() != 0:
            raise AnsibleConnectionFailure(
                "The pibake.image.chroot connection needs root on the build host to chroot; run Ansible as root."
            )
        root = self._root()
        if self.get_option("pibake_chroot_host_commands"):
            result = self._on_host(root, to_text(cmd), in_data)
            if result is not None:
                return result
        if in_data and self.get_option("pibake_chroot_persistent"):
            result = self._exec_persistent(root, to_text(cmd), in_data)
            if result is not None:
                return result
        argv = chroot_argv(self._chroot_binary(), root, self.get_option("executable"), to_text(cmd))
        display.vvv(f"EXEC {shlex.join(argv)}", host=root)
        try:
            proc = subprocess.Popen(
                [to_bytes(arg, errors="surrogate_or_strict") for arg in argv],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=build_env(self.get_option("pibake_chroot_env")),
                cwd="/",
                close_fds=True,
            )
        except OSError as err:
            raise AnsibleConnectionFailure(
                f"Could not start {argv[0]}: {err.strerror}; check the build host."
            ) from None
        stdout, stderr = proc.communicate(in_data)
        self._raise_for_chroot_failure(proc.returncode, stderr, root)
        return proc.returncode, stdout, stderr

    def _on_host(self, root: str, cmd: str, in_data: t.Optional[bytes]) -> t.Optional[tuple]:
        """Do a housekeeping command or answer the internal stat on the build host; None: run it in the image."""
        try:
            return self._stat_on_host(root, cmd, in_data) if in_data else self._exec_on_host(root, cmd)
        except Exception as err:  # never fail what the image can do (each of these may safely run again)
            display.vvv(f"not done on the build host: {err!r}", host=root)
            return None

    def _exec_on_host(self, root: str, cmd: str) -> t.Optional[tuple]:
        """Do one of Ansible's housekeeping shell commands on the build host; None means: run it in the image."""
        op = _chroot_shell.parse(cmd)
        if op is None or op.shell != self.get_option("executable"):
            return None
        result = _chroot_shell.run(root, op, build_env(self.get_option("pibake_chroot_env")))
        if result is None:
            display.vvv(f"{op.kind} not done on the build host, running it in the image", host=root)
            return None
        display.vvv(f"EXEC {cmd} (done on the build host: {op.kind})", host=root)
        return result

    def _stat_on_host(self, root: str, cmd: str, in_data: bytes) -> t.Optional[tuple]:
        """Answer the stat Ansible's action plugins run internally on the build host; None: run the module."""
        if not _forkserver.supported_ansible(ANSIBLE_VERSION):
            return None
        parsed = _forkserver.parse_module_command(cmd)
        if parsed is None:
            return None
        request = _chroot_stat.parse(_chroot_stat.payload_call(in_data))
        if request is None:
            return None
        env = build_env(self.get_option("pibake_chroot_env"))
        env.update(parsed[1])
        stdout = _chroot_stat.run(root, request, env)
        if stdout is None:
            display.vvv(f"stat of {request.path} not answered on the build host, running the module", host=root)
            return None
        display.vvv(f"EXEC {parsed[2]} ansible.modules.stat {request.path} (answered on the build host)", host=root)
        return 0, stdout, b""

    def _exec_persistent(self, root: str, cmd: str, in_data: bytes) -> t.Optional[tuple]:
        """Run a pipelined module through the persistent interpreter; None means: run it the plain way."""
        try:
            prepared = self._prepare_persistent(root, cmd, in_data)
        except Exception as err:  # never fail a task the plain path can run
            display.vvv(f"persistent interpreter not used: {err!r}", host=root)
            return None
        if prepared is None:
            return None
        spec, task_env, payload = prepared
        # run() itself returns None for any failure before the module starts, and never after.
        result = _forkserver.run(spec, task_env, payload, in_data)
        if result is None:
            display.vvv(f"persistent interpreter not used ({_forkserver.LAST_REASON[0]}), running the plain way",
                        host=root)
            return None
        display.vvv(
            f"EXEC {spec.interpreter} {payload.module_fqn} "
            f"(persistent interpreter{', started' if result.server_started else ''}; log {spec.path('.log')})",
            host=root,
        )
        return result.rc, result.stdout, result.stderr

    def _prepare_persistent(self, root: str, cmd: str, in_data: bytes) -> t.Optional[tuple]:
        """``(server spec, task environment, payload)`` when this command may take the persistent path."""
        if not _forkserver.supported_ansible(ANSIBLE_VERSION):
            return None
        parsed = _forkserver.parse_module_command(cmd)
        if parsed is None:
            return None
        shell, prefix_env, interpreter = parsed
        payload = _forkserver.parse_payload(in_data)
        if payload is None:
            return None
        env = build_env(self.get_option("pibake_chroot_env"))
        if not _forkserver.env_compatible(env, prefix_env):
            display.vvv("persistent interpreter not used: the task changes start-up variables", host=root)
            return None
        task_env = dict(env)
        task_env.update(prefix_env)
        spec = _forkserver.ServerSpec(
            root=root,
            launcher=[self._chroot_binary(), root],
            shell=shell,
            interpreter=interpreter,
            env=env,
            owner_pid=self._owner_pid,
            idle=float(self.get_option("pibake_chroot_persistent_idle")),
        )
        return spec, task_env, payload

    @staticmethod
    def _raise_for_chroot_failure(returncode: int, stderr: bytes, root: str) -> None:
        """Turn a failure of the chroot binary itself (not of the command) into one sentence."""
        if returncode not in (125, 126, 127) or not stderr.startswith(b"chroot: "):
            return
        detail = to_text(stderr, errors="surrogate_or_replace").strip().splitlines()[0]
        if "Exec format error" in detail:
            raise AnsibleConnectionFailure(
                f"The image at {root} holds binaries of another architecture and the build host cannot run them "
                f"({detail}); register qemu-user binfmt (e.g. `update-binfmts --enable qemu-aarch64`)."
            )
        raise AnsibleConnectionFailure(f"Could not enter the image at {root} ({detail}); check the image root.")

    def put_file(self, in_path: str, out_path: str) -> None:
        """Copy a controller file into the image, on the host side, resolving ``out_path`` inside the root."""
        super().put_file(in_path, out_path)
        root = self._root()
        display.vvv(f"PUT {in_path} TO {out_path}", host=root)
        if not os.path.isfile(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"File to put into the image does not exist: {to_native(in_path)}")
        try:
            written = put_into_root(root, to_text(in_path), to_text(out_path))
        except PibakeError as err:
            raise AnsibleError(str(err)) from None
        except OSError as err:
            raise AnsibleError(f"Failed to put {in_path} into the image as {out_path}: {err.strerror}.") from None
        display.vvvv(f"PUT wrote {written}", host=root)

    def fetch_file(self, in_path: str, out_path: str) -> None:
        """Copy a file out of the image, on the host side, resolving ``in_path`` inside the root."""
        super().fetch_file(in_path, out_path)
        root = self._root()
        display.vvv(f"FETCH {in_path} TO {out_path}", host=root)
        try:
            read = fetch_from_root(root, to_text(in_path), to_text(out_path))
        except PibakeError as err:
            raise AnsibleError(str(err)) from None
        except OSError as err:
            raise AnsibleError(f"Failed to fetch {in_path} from the image to {out_path}: {err.strerror}.") from None
        display.vvvv(f"FETCH read {read}", host=root)

    def reset(self) -> None:
        """Stop the persistent interpreters of this root and playbook run (the next task starts a fresh one)."""
        try:
            root = self._root()
        except AnsibleConnectionFailure:
            return
        stopped = _forkserver.stop_servers(root=root, owner_pid=self._owner_pid)
        display.vvv(f"RESET stopped {stopped} persistent interpreter(s)", host=root)

    def close(self) -> None:
        """Nothing to tear down here: the persistent interpreter outlives the task's worker on purpose."""
        self._connected = False
