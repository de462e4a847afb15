# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Host side of the persistent interpreter used by the ``pibake.image.chroot`` connection.

Under qemu-user a module run costs seconds of CPU, almost all of it importing ``ansible.module_utils.basic`` from
the AnsiballZ zip (zipimport never caches bytecode). The connection therefore runs pipelined Python modules
through a fork server inside the image (``_forkserver_stub.py``): started once per image root and playbook run, it
keeps the module_utils imported and forks one child per task.

This module decides which commands may take that path (``parse_module_command``, ``parse_payload``,
``env_compatible``), starts the server (``start_server``: a detached daemon reached through a socket on the build
host, in ``/run/pibake/forkserver``), and runs a task through it (``run``). Every function returns ``None`` when
the task must take the plain path instead, and does so only before the module has started, so a task that would
have worked never fails because of the server.

No Ansible imports here: pytest drives it directly, and the connection plugin passes in what it knows.
"""

from __future__ import annotations

import array
import base64
import binascii
import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import selectors
import shlex
import socket
import struct
import subprocess
import time
import zipfile
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

STUB_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_forkserver_stub.py")
DEFAULT_STATE_DIR = "/run/pibake/forkserver"
DEFAULT_IDLE = 60.0
PROTOCOL = 1

# The server's bootstrap: read the configuration and the stub's source from stdin, run the stub.
BOOT = (
    "import sys,json;c=json.loads(sys.stdin.buffer.read().decode('utf-8'));"
    "g={'__name__':'__pibake_forkserver__','CONFIG':c,'__builtins__':__builtins__};"
    "exec(compile(c.pop('stub'),'<pibake-forkserver>','exec',dont_inherit=True),g)"
)

# Variables the interpreter (or qemu-user, the C library, or module_utils at import time) reads when it starts: a
# task that sets one of them differently from the server's own environment runs the plain way.
_STARTUP_PREFIXES = ("PYTHON", "LD_", "LC_", "QEMU_", "MALLOC_", "GLIBC_")
_STARTUP_NAMES = frozenset({"LANG", "LANGUAGE", "TZ", "HOME", "UNIXCONFDIR", "UNIXUSRLIBDIR"})

_HDR = struct.Struct("!I")
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.S)
_PYTHON = re.compile(r"/[^\s'\"\\]*/python[0-9.]*")
_MAIN_CALL = b'\nif __name__ == "__main__":\n    _ansiballz_main(\n'
_ZIP_DATA = re.compile(rb"^zip_data='([A-Za-z0-9+/=]*)',$", re.M)
_MODULE_FQN = re.compile(rb"^module_fqn='([A-Za-z0-9_.]+)',$", re.M)
_NO_EXTENSIONS = re.compile(rb"^extensions=\{\},$", re.M)

_SPAWNED: List[subprocess.Popen] = []  # servers started by this process: referenced so Python never warns about them


# -- what may take the persistent path ------------------------------------------------------------------------------


def supported_ansible(version: str) -> bool:
    """The AnsiballZ payload layout this module reads is that of ansible-core 2.19."""
    return re.match(r"2\.19\.\d", version or "") is not None


def split_shell_command(cmd: str) -> Optional[Tuple[str, str]]:
    """``(shell, script)`` when ``cmd`` is exactly ``<absolute shell> -c <one quoted script>``, else None."""
    try:
        words = shlex.split(cmd)
    except ValueError:
        return None
    if len(words) != 3 or words[1] != "-c" or not words[0].startswith("/"):
        return None
    if cmd != f"{words[0]} -c {shlex.quote(words[2])}" or shlex.quote(words[0]) != words[0]:
        return None
    return words[0], words[2]


def parse_module_command(cmd: str) -> Optional[Tuple[str, Dict[str, str], str]]:
    """``(shell, env, interpreter)`` when ``cmd`` is exactly a pipelined module run, else None.

    The form is what Ansible builds for a pipelined Python module with the default executable:
    ``<shell> -c '[K=V ...] <python> && sleep 0'``. Anything else (raw, scripts, become wrappers, async, a ``cd``)
    is refused, and so is any word the shell would not take literally.
    """
    split = split_shell_command(cmd)
    if split is None:
        return None
    shell, inner = split
    try:
        parts = shlex.split(inner)
    except ValueError:
        return None
    if len(parts) < 4 or parts[-3:] != ["&&", "sleep", "0"]:
        return None
    interpreter = parts[-4]
    if not _PYTHON.fullmatch(interpreter):
        return None
    env: Dict[str, str] = {}
    for word in parts[:-4]:
        match = _ASSIGNMENT.fullmatch(word)
        if match is None or match.group(1) in env:
            return None
        env[match.group(1)] = match.group(2)
    rebuilt = " ".join([f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(interpreter), "&& sleep 0"])
    if rebuilt != inner:
        return None
    return shell, env, interpreter


@dataclass
class Payload:
    """What the server needs to know about one AnsiballZ payload."""

    zip_span: Tuple[int, int]  # offsets of the base64 zip data inside the payload
    call: int  # offset of the `if __name__ == "__main__":` that calls the wrapper
    module_fqn: str
    module_file: str  # the module's own path in the zip
    module_sha: str
    manifest: Dict[str, str]  # path in the zip -> sha256, the module's own file left out
    utils_hash: str  # one digest over the manifest: which module_utils (and versions) the payload carries


def parse_payload(data: bytes) -> Optional[Payload]:
    """Read an ansible-core 2.19 AnsiballZ wrapper; None for anything else (old-style modules, extensions on)."""
    if not data or b"\n_ANSIBALLZ_WRAPPER = True\n" not in data[:4096]:
        return None
    call = data.rfind(_MAIN_CALL)
    if call < 0 or data.count(_MAIN_CALL) != 1:
        return None
    tail_start = call + len(_MAIN_CALL)
    tail = data[tail_start:]
    zip_match = _ZIP_DATA.search(tail)
    fqn_match = _MODULE_FQN.search(tail)
    if zip_match is None or fqn_match is None or _NO_EXTENSIONS.search(tail) is None:
        return None
    if not tail.rstrip().endswith(b"\n)"):
        return None
    start, end = tail_start + zip_match.start(1), tail_start + zip_match.end(1)
    module_fqn = fqn_match.group(1).decode("ascii")
    module_file = module_fqn.replace(".", "/") + ".py"
    manifest = {}
    module_sha = ""
    try:
        with zipfile.ZipFile(io.BytesIO(base64.b64decode(data[start:end], validate=True))) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                digest = hashlib.sha256(archive.read(info)).hexdigest()
                if info.filename == module_file:
                    module_sha = digest
                else:
                    manifest[info.filename] = digest
    except (binascii.Error, zipfile.BadZipFile, ValueError, OSError, EOFError):
        return None
    if "ansible/module_utils/basic.py" not in manifest or not module_sha:
        return None
    utils_hash = hashlib.sha256(json.dumps(sorted(manifest.items())).encode()).hexdigest()
    return Payload((start, end), call + 1, module_fqn, module_file, module_sha, manifest, utils_hash)


def is_startup_variable(name: str) -> bool:
    return name in _STARTUP_NAMES or name.startswith(_STARTUP_PREFIXES)


def env_compatible(server_env: Dict[str, str], task_env: Dict[str, str]) -> bool:
    """True when the task's extra variables leave everything the interpreter reads at start-up as it is."""
    return all(server_env.get(k) == v for k, v in task_env.items() if is_startup_variable(k))


# -- the server -----------------------------------------------------------------------------------------------------


@dataclass
class ServerSpec:
    """One persistent interpreter: an image root, a shell and interpreter in it, an environment and an owner."""

    root: str  # canonical host path of the image root
    launcher: Sequence[str]  # host argv prefix that enters the root: [chroot, root] (empty in tests)
    shell: str
    interpreter: str
    env: Dict[str, str]
    owner_pid: int  # the ansible-playbook process; the server ends with it
    idle: float = DEFAULT_IDLE
    state_dir: str = field(default_factory=lambda: os.environ.get("PIBAKE_FORKSERVER_DIR") or DEFAULT_STATE_DIR)

    def root_id(self) -> Tuple[int, int]:
        st = os.stat(self.root)
        return st.st_dev, st.st_ino

    def key(self) -> str:
        parts = [PROTOCOL, stub_digest(), self.root, list(self.root_id()), list(self.launcher), self.shell,
                 self.interpreter, sorted(self.env.items()), self.owner_pid, _start_time(self.owner_pid)]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def path(self, suffix: str) -> str:
        return os.path.join(self.state_dir, self.key() + suffix)


_STUB_CACHE: Dict[str, str] = {}


def stub_source() -> str:
    if "source" not in _STUB_CACHE:
        with open(STUB_PATH, encoding="utf-8") as handle:
            _STUB_CACHE["source"] = handle.read()
    return _STUB_CACHE["source"]


def stub_digest() -> str:
    return hashlib.sha256(stub_source().encode()).hexdigest()[:16]


def _start_time(pid: int) -> str:
    """The process start time (field 22 of /proc/PID/stat), so a reused pid never finds an old server."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return ""


_MAX_SUN_PATH = 107  # sockaddr_un.sun_path holds 108 bytes, NUL included


@contextlib.contextmanager
def _unix_address(path: str) -> Iterator[str]:
    """``path`` as an AF_UNIX address; a path too long for one is reached through its folder's descriptor."""
    if len(os.fsencode(path)) <= _MAX_SUN_PATH:
        yield path
        return
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{os.path.basename(path)}"
    finally:
        os.close(fd)


def _connect(path: str) -> Optional[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _unix_address(path) as address:
            sock.connect(address)
    except OSError:
        sock.close()
        return None
    return sock


def _open_pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return -1


def start_server(spec: ServerSpec) -> Tuple[Optional[socket.socket], bool]:
    """Connect to the spec's server, starting it first if it is not running: ``(socket or None, started now)``.

    The listening socket is created here, on the build host, and inherited by the server, so it accepts
    connections before the interpreter has even started (requests wait in the backlog). Starting is serialized by
    a lock file, so concurrent workers start one server.
    """
    sock_path = spec.path(".sock")
    sock = _connect(sock_path)
    if sock is not None:
        return sock, False
    if os.path.exists(spec.path(".failed")):
        return None, False
    os.makedirs(spec.state_dir, mode=0o700, exist_ok=True)
    with open(spec.path(".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        sock = _connect(sock_path)
        if sock is not None:
            return sock, False
        if os.path.exists(spec.path(".failed")):
            return None, False
        _sweep(spec.state_dir, spec.key())
        try:
            _spawn(spec, sock_path)
        except OSError as err:
            mark_failed(spec, f"could not start the server: {err}")
            return None, False
        sock = _connect(sock_path)
        if sock is None:  # it died at once (the listening socket went with it)
            mark_failed(spec, "the server exited at once")
        return sock, True


def _spawn(spec: ServerSpec, sock_path: str) -> None:
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = f"{sock_path}.{os.getpid()}.tmp"
    pidfd = -1
    try:
        with _unix_address(tmp) as address:
            listener.bind(address)
        listener.listen(64)
        os.rename(tmp, sock_path)
        pidfd = _open_pidfd(spec.owner_pid)
        config = {
            "listen_fd": listener.fileno(),
            "owner_fd": pidfd,
            "owner_pid": spec.owner_pid,
            "idle": spec.idle,
            "root_id": list(spec.root_id()),
            "env": spec.env,
            "stub": stub_source(),
        }
        script = f"exec {shlex.quote(spec.interpreter)} -c {shlex.quote(BOOT)} pibake-forkserver"
        argv = [*spec.launcher, spec.shell, "-c", script]
        with open(spec.path(".log"), "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=log, stderr=log, env=spec.env, cwd="/",
                pass_fds=[fd for fd in (listener.fileno(), pidfd) if fd >= 0], close_fds=True,
                start_new_session=True,
            )
        _SPAWNED.append(proc)
        with open(spec.path(".info"), "w", encoding="utf-8") as handle:
            json.dump({"root": spec.root, "owner_pid": spec.owner_pid, "pid": proc.pid,
                       "interpreter": spec.interpreter}, handle)
        try:
            if proc.stdin is None:  # never: stdin=PIPE
                raise OSError("the server has no stdin")
            proc.stdin.write(json.dumps(config).encode("utf-8"))
            proc.stdin.close()
        except OSError:
            pass
    finally:
        listener.close()
        if pidfd >= 0:
            os.close(pidfd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def _sweep(state_dir: str, keep: str) -> None:
    """Remove what servers that are gone left behind (sockets nobody listens on), older than an hour."""
    now = time.time()
    try:
        names = os.listdir(state_dir)
    except OSError:
        return
    for name in names:
        if not name.endswith(".sock") or name.startswith(keep):
            continue
        path = os.path.join(state_dir, name)
        try:
            if now - os.lstat(path).st_mtime < 3600:
                continue
        except OSError:
            continue
        probe = _connect(path)
        if probe is not None:
            probe.close()
            continue
        stem = path[: -len(".sock")]
        for suffix in (".sock", ".log", ".failed", ".lock", ".info"):
            try:
                os.unlink(stem + suffix)
            except OSError:
                pass


def mark_failed(spec: ServerSpec, reason: str) -> None:
    """Remember that this server cannot be had, so later tasks of the run go the plain way at once."""
    try:
        with open(spec.path(".failed"), "w", encoding="utf-8") as handle:
            handle.write(reason + "\n")
    except OSError:
        pass


def request(spec: ServerSpec, op: str, timeout: float = 10.0) -> Optional[dict]:
    """Send ``ping`` or ``stop`` to a running server; None when none is running."""
    sock = _connect(spec.path(".sock"))
    if sock is None:
        return None
    with sock:
        sock.settimeout(timeout)
        try:
            _send_msg(sock, {"v": PROTOCOL, "op": op})
            return _recv_msg(sock)
        except (OSError, EOFError, ValueError):
            return None


def stop_server(spec: ServerSpec) -> bool:
    return request(spec, "stop") is not None


def servers(state_dir: str = "", root: str = "", owner_pid: int = 0) -> List[Tuple[str, dict]]:
    """``(socket path, info)`` of the servers started from this host, optionally only those of a root / owner."""
    state_dir = state_dir or os.environ.get("PIBAKE_FORKSERVER_DIR") or DEFAULT_STATE_DIR
    found = []
    try:
        names = sorted(os.listdir(state_dir))
    except OSError:
        return found
    for name in names:
        if not name.endswith(".info"):
            continue
        try:
            with open(os.path.join(state_dir, name), encoding="utf-8") as handle:
                info = json.load(handle)
        except (OSError, ValueError):
            continue
        if (root and info.get("root") != root) or (owner_pid and info.get("owner_pid") != owner_pid):
            continue
        found.append((os.path.join(state_dir, name[: -len(".info")] + ".sock"), info))
    return found


def stop_servers(state_dir: str = "", root: str = "", owner_pid: int = 0, timeout: float = 10.0) -> int:
    """Tell every matching running server to stop; returns how many acknowledged."""
    stopped = 0
    for sock_path, _info in servers(state_dir, root, owner_pid):
        sock = _connect(sock_path)
        if sock is None:
            continue
        with sock:
            sock.settimeout(timeout)
            try:
                _send_msg(sock, {"v": PROTOCOL, "op": "stop"})
                _recv_msg(sock)
                stopped += 1
            except (OSError, EOFError, ValueError):
                pass
    return stopped


def _send_msg(sock: socket.socket, obj: dict, fds: Sequence[int] = ()) -> None:
    data = json.dumps(obj).encode("utf-8")
    buf = _HDR.pack(len(data)) + data
    if fds:
        sent = sock.sendmsg([buf], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sent = sock.send(buf)
    if sent < len(buf):
        sock.sendall(buf[sent:])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size > 0:
        chunk = sock.recv(size)
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _recv_msg(sock: socket.socket) -> dict:
    (size,) = _HDR.unpack(_recv_exact(sock, _HDR.size))
    return json.loads(_recv_exact(sock, size))


class _Replies:
    """Incremental parser of the server's framed replies."""

    def __init__(self) -> None:
        self.buffer = b""

    def feed(self, data: bytes) -> List[dict]:
        self.buffer += data
        out = []
        while len(self.buffer) >= _HDR.size:
            (size,) = _HDR.unpack(self.buffer[: _HDR.size])
            if len(self.buffer) < _HDR.size + size:
                break
            out.append(json.loads(self.buffer[_HDR.size: _HDR.size + size]))
            self.buffer = self.buffer[_HDR.size + size:]
        return out


def exit_code(status: int) -> int:
    """The exit code ``<shell> -c '<python> && sleep 0'`` reports for the interpreter's wait status."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 1


LAST_REASON = [""]  # why the last run() gave None (for -vvv and tests)
LOST_STATUS = b"pibake.image.chroot: the persistent interpreter went away during the task; exit status unknown\n"


@dataclass
class Result:
    rc: int
    stdout: bytes
    stderr: bytes
    server_started: bool = False  # this call started the server


def run(spec: ServerSpec, task_env: Dict[str, str], payload: Payload, in_data: bytes,
        umask: Optional[int] = None) -> Optional[Result]:
    """Run one pipelined module through the server. None (before anything ran): take the plain path.

    Exceptions before the server has said the module is starting mean None too; after that they propagate (the
    caller's task fails rather than running the module a second time).
    """
    try:
        sock, fresh = start_server(spec)
    except Exception as err:
        LAST_REASON[0] = f"could not reach the server: {err!r}"
        return None
    if sock is None:
        LAST_REASON[0] = "no server (it could not be started for this run)"
        return None
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    header = {
        "v": PROTOCOL, "op": "run", "env": task_env, "umask": umask, "length": len(in_data),
        "zip": list(payload.zip_span), "call": payload.call, "manifest": payload.manifest,
        "utils_hash": payload.utils_hash, "module": payload.module_fqn, "module_file": payload.module_file,
        "module_sha": payload.module_sha,
    }
    progress = {"started": False}
    try:
        stdin_r, stdin_w = os.pipe()
        os.close(stdin_w)  # the payload travels on the socket; the module sees an empty stdin, as after the pipe
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
    except OSError:
        sock.close()
        return None
    try:
        try:
            _send_msg(sock, header, fds=[stdin_r, out_w, err_w])
            sock.sendall(in_data)
        finally:
            for fd in (stdin_r, out_w, err_w):
                os.close(fd)
        result = _collect(sock, out_r, err_r, progress)
    except Exception as err:
        if progress["started"]:
            raise  # the module is running or ran: never run it a second time the plain way
        result = f"connection failed: {err!r}"
    finally:
        sock.close()
        os.close(out_r)
        os.close(err_r)
    if isinstance(result, Result):
        result.server_started = fresh
        return result
    LAST_REASON[0] = str(result)
    if fresh and not str(result).startswith("refused"):
        # A server that never answered its first request will not answer later ones: the rest of the run goes
        # the plain way at once instead of paying a start-up each task.
        mark_failed(spec, f"the new server did not run its first task ({result})")
    return None


def _collect(sock: socket.socket, out_r: int, err_r: int, progress: dict) -> object:
    """The task's Result once it ran; before it started: "refused" (the server said so) or why the link broke.

    ``progress["started"]`` turns true as soon as the server says the module is starting: from then on the task
    belongs to this path, whatever happens.
    """
    replies = _Replies()
    out: List[bytes] = []
    err: List[bytes] = []
    started = False
    status: Optional[int] = None
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ, "sock")
        open_pipes = 0
        while True:
            for key, _events in selector.select():
                what = key.data
                if what == "sock":
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        selector.unregister(sock)
                        if not started:
                            return "connection closed before the task started"
                        if status is None:
                            status = -1
                        continue
                    for reply in replies.feed(data):
                        if "fallback" in reply and not started:
                            return f"refused: {reply['fallback']}"
                        if reply.get("started") and not started:
                            started = progress["started"] = True
                            selector.register(out_r, selectors.EVENT_READ, out)
                            selector.register(err_r, selectors.EVENT_READ, err)
                            open_pipes = 2
                        if "status" in reply:
                            status = int(reply["status"])
                else:
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        what.append(chunk)
                    else:
                        selector.unregister(key.fd)
                        open_pipes -= 1
            if started and open_pipes == 0 and status is not None:
                break
    if status == -1:
        return Result(1, b"".join(out), b"".join(err) + LOST_STATUS)
    return Result(exit_code(status), b"".join(out), b"".join(err))
