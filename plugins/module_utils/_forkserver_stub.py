# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The persistent interpreter that runs *inside* the image (the server side of ``_forkserver``).

This file is never imported by Ansible or by modules: ``_forkserver.start_server`` reads its text and hands it to
the image's own ``python3`` (``chroot <root> <sh> -c 'exec <python> -c <BOOT>'``), so it must stay pure standard
library and run on every Python from 3.9 to 3.13. Nothing is written into the image: the listening socket lives on
the build host and arrives as an inherited file descriptor, and so does a pidfd of the ``ansible-playbook``
process.

Processes:

* the **master** (the process started by the host) accepts requests on the listening socket and routes each one
  to a zygote. It imports only the standard library.
* a **zygote** is forked from the master per set of Ansible module_utils: it imports
  ``ansible.module_utils.basic`` (and the AnsiballZ loader) once, from the first request's payload zip held in
  memory, then forks one **child** per task. A request goes to a zygote only if every file the zygote imported
  is in the request's zip with the same content (sha256), so different ansible-core or collection versions never
  mix; otherwise a new zygote is made.
* a **child** runs the task's AnsiballZ payload exactly as ``python3`` reading it from stdin would (fresh
  ``__main__``, ``sys.argv == ['']``, the task's environment, umask and working directory, the client's stdin,
  stdout and stderr pipes), then reports its exit status through the zygote.

Modules imported from AnsiballZ zips are compiled once per zygote: before forking a child, the zygote compiles
every file of the task's zip it has not compiled yet (and the payload itself), and children inherit the code.

Protocol (AF_UNIX stream): every message is a 4-byte big-endian length plus that much JSON; file descriptors
travel with the first byte of a message (SCM_RIGHTS). Client -> master: ``{"op": "run", ...}`` with the fds
``[stdin, stdout, stderr]`` then the raw payload bytes; or ``{"op": "ping"}`` / ``{"op": "stop"}``. Replies to
a run: ``{"started": true}`` (the child is about to run the module: from here the task counts as run),
``{"status": <wait status>}`` when it ends, or ``{"fallback": "<reason>"}`` before anything ran.
"""

import array
import builtins
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import io
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import types
import zipfile

PROTOCOL = 1
_HDR = struct.Struct("!I")
_MAX_MESSAGE = 64 << 20
# Path the warm module_utils appear under (__file__ and code filenames). Like a real payload path, it does not
# exist once the module has started; only the relation between the files below it matters (ansible-core relates
# code locations to ``ansible/__init__.py``'s folder to attribute deprecations).
WARM_ARCHIVE = "/tmp/ansible_pibake_forkserver_payload/ansible_pibake_forkserver_payload.zip"
# Modules the wrapper itself imports after unpacking the zip (ansible-core 2.19); a zygote imports them up front.
WARM_MODULES = ("ansible.module_utils.basic", "ansible.module_utils._internal._ansiballz._loader")
# Imported at run time by every module (the JSON profiles of its arguments and result): warmed too when bundled.
WARM_OPTIONAL = (
    "ansible.modules",
    "ansible.module_utils._internal._json._profiles._module_legacy_c2m",
    "ansible.module_utils._internal._json._profiles._module_legacy_m2c",
    "ansible.module_utils._internal._json._profiles._module_modern_c2m",
    "ansible.module_utils._internal._json._profiles._module_modern_m2c",
)
# Placeholder for the payload's zip literal while compiling the part of the payload that calls the wrapper.
ZIP_PLACEHOLDER = "pibake-forkserver-zip-data-placeholder"
# Standard library modules most modules import beyond what basic does; imported once by the master. Only modules
# whose import does not read the environment or start anything.
PRELOAD = (
    "base64", "datetime", "glob", "grp", "inspect", "locale", "platform", "pwd", "runpy", "selectors", "shlex",
    "shutil", "subprocess", "tempfile", "traceback", "typing", "zipfile", "dataclasses", "filecmp", "fnmatch",
    "string", "textwrap", "difflib", "stat", "errno", "enum", "functools", "collections.abc", "contextlib",
)
MAX_ZYGOTES = 3
WARM_TIMEOUT = 900.0
_FUTURE_FLAGS = 0
for _feature in ("annotations", "generator_stop", "barry_as_FLUFL"):
    _FUTURE_FLAGS |= getattr(getattr(__import__("__future__"), _feature, None), "compiler_flag", 0)
MAX_CODE_CACHE = 4000

LOG_FD = -1


def log(message):
    if LOG_FD < 0:
        return
    try:
        os.write(LOG_FD, ("pibake-forkserver[%d] %s %s\n" % (os.getpid(), time.strftime("%H:%M:%S"), message))
                 .encode("utf-8", "replace"))
    except OSError:
        pass


# -- framing -------------------------------------------------------------------------------------------------------


def send_msg(sock, obj, fds=()):
    data = json.dumps(obj).encode("utf-8")
    buf = _HDR.pack(len(data)) + data
    if fds:
        sent = sock.sendmsg([buf], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sent = sock.send(buf)
    if sent < len(buf):
        sock.sendall(buf[sent:])


def recv_exact(sock, size):
    chunks = []
    while size > 0:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def recv_msg(sock, maxfds=0):
    """One message and the fds that came with it; EOFError on a clean end of stream before a message."""
    fds = []
    if maxfds:
        data, ancdata, flags, _address = sock.recvmsg(_HDR.size, socket.CMSG_SPACE(maxfds * array.array("i").itemsize))
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                got = array.array("i")
                got.frombytes(payload[: len(payload) - (len(payload) % got.itemsize)])
                fds.extend(got)
        if flags & getattr(socket, "MSG_CTRUNC", 0):
            _close_all(fds)
            raise ValueError("file descriptors truncated")
        if not data:
            _close_all(fds)
            raise EOFError("connection closed")
    else:
        data = b""
    try:
        data += recv_exact(sock, _HDR.size - len(data))
        (size,) = _HDR.unpack(data)
        if size > _MAX_MESSAGE:
            raise ValueError("message too large")
        return json.loads(recv_exact(sock, size).decode("utf-8")), fds
    except BaseException:
        _close_all(fds)
        raise


def _close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# -- importing from AnsiballZ zips, with compiled code kept across tasks ----------------------------------------------


class _Archive(object):
    """The .py files of one AnsiballZ zip, with their sha256 digests.

    Built from bytes in memory (the warm zip), from a manifest the host sent (the task's zip: its names and digests
    are known, the file itself is only read when code is not cached yet or source is asked for), or by reading a zip
    file met on sys.path.
    """

    def __init__(self, path, data=None, manifest=None):
        self.path = path
        self._zip = None
        if manifest is not None:
            self.digests = dict(manifest)
        elif data is not None:
            self._zip = zipfile.ZipFile(io.BytesIO(data))
            self.digests = dict((name, None) for name in self._zip.namelist())
        else:
            with zipfile.ZipFile(path) as archive:
                self.digests = dict((name, None) for name in archive.namelist())

    def find(self, fullname):
        base = fullname.replace(".", "/")
        if base + "/__init__.py" in self.digests:
            return base + "/__init__.py", True
        if base + ".py" in self.digests:
            return base + ".py", False
        return None

    def read(self, inner):
        if self._zip is not None:
            data = self._zip.read(inner)
        else:  # a file: opened for each read, as zipimport does (no descriptor stays open in the module)
            with zipfile.ZipFile(self.path) as archive:
                data = archive.read(inner)
        digest = self.digests.get(inner)
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise ImportError("%s in %s does not match its manifest" % (inner, self.path))
        return data

    def digest(self, inner):
        digest = self.digests.get(inner)
        if digest is None:
            digest = self.digests[inner] = hashlib.sha256(self.read(inner)).hexdigest()
        return digest


class _Loader(importlib.abc.Loader):
    """Loads one module from an _Archive; the code object comes from the server's cache when it has it."""

    def __init__(self, finder, archive, fullname, inner, is_pkg):
        self.finder = finder
        self.archive = archive
        self.fullname = fullname
        self.inner = inner
        self.is_pkg = is_pkg
        self.origin = archive.path + "/" + inner

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        exec(self.get_code(module.__name__), module.__dict__)

    def _check(self, fullname):
        # Like a zipimporter asked about a name it does not hold (linecache asks for "__main__" on 3.9-3.12).
        if fullname is not None and fullname != self.fullname:
            raise ImportError("%s is not %s" % (fullname, self.fullname), name=fullname)

    def get_filename(self, fullname=None):
        self._check(fullname)
        return self.origin

    def is_package(self, fullname=None):
        self._check(fullname)
        return self.is_pkg

    def get_source(self, fullname=None):
        self._check(fullname)
        return importlib.util.decode_source(self.archive.read(self.inner))

    def get_data(self, path):
        prefix = self.archive.path + "/"
        if not path.startswith(prefix):
            raise OSError("not in %s: %s" % (self.archive.path, path))
        try:
            return self.archive.read(path[len(prefix):])
        except KeyError:
            raise OSError("not in %s: %s" % (self.archive.path, path))

    def get_code(self, fullname=None):
        self._check(fullname)
        return self.finder.code_for(self.archive, self.inner)


class ZipFinder(importlib.abc.MetaPathFinder):
    """Finds modules in the AnsiballZ zips on sys.path, as zipimport would, but compiles each source only once.

    Sits before PathFinder in sys.meta_path. It answers for a top-level name only when an AnsiballZ zip comes first
    on sys.path (the AnsiballZ wrapper puts the task's zip at sys.path[0]), and for a submodule only when the parent
    package was loaded by this finder, so everything else goes through Python's own machinery.
    """

    def __init__(self):
        self.archives = {}  # sys.path entry -> _Archive, or None when the entry is not an AnsiballZ zip
        self.code = {}  # "<inner path>:<sha256 of the source>" -> code object
        self.task_manifest = None  # in a child: the digests of the task's zip, from the host
        self.known_path = ()  # in a child: sys.path before the payload ran

    def register(self, path, archive):
        self.archives[path] = archive

    def forget(self, path):
        self.archives.pop(path, None)

    def _archive(self, entry):
        try:
            return self.archives[entry]
        except KeyError:
            pass
        archive = None
        if isinstance(entry, str) and entry.endswith(".zip") and os.path.isfile(entry):
            try:
                if self.task_manifest is not None and entry.endswith("_payload.zip") and entry not in self.known_path:
                    # The zip the AnsiballZ wrapper just wrote from the payload: the host listed its content.
                    candidate = _Archive(entry, manifest=self.task_manifest)
                    self.task_manifest = None
                else:
                    candidate = _Archive(entry)
                if "ansible/__init__.py" in candidate.digests:
                    archive = candidate
            except (OSError, zipfile.BadZipFile, ValueError):
                archive = None
        self.archives[entry] = archive
        return archive

    def find_spec(self, fullname, path=None, target=None):
        parent = fullname.rpartition(".")[0]
        if parent:
            module = sys.modules.get(parent)
            spec = getattr(module, "__spec__", None)
            if not isinstance(getattr(spec, "loader", None), _Loader):
                return None
        for entry in list(sys.path):
            archive = self._archive(entry)
            if archive is None:
                if parent:
                    continue
                return None
            found = archive.find(fullname)
            if found is None:
                continue
            inner, is_pkg = found
            loader = _Loader(self, archive, fullname, inner, is_pkg)
            spec = importlib.util.spec_from_loader(fullname, loader, origin=loader.origin, is_package=is_pkg)
            if is_pkg:
                spec.submodule_search_locations = [archive.path + "/" + inner.rpartition("/")[0]]
            spec.has_location = True
            return spec
        return None

    def code_for(self, archive, inner):
        key = inner + ":" + archive.digest(inner)
        code = self.code.get(key)
        if code is None:
            source = archive.read(inner)
            text = source.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            code = compile(text, WARM_ARCHIVE + "/" + inner, "exec", dont_inherit=True)
            self.remember(key, code)
        return code

    def remember(self, key, code):
        if len(self.code) < MAX_CODE_CACHE:
            self.code[key] = code

    def precompile(self, payload, request):
        """Compile, in the zygote, every file of the task's zip not compiled yet (children inherit the code)."""
        manifest = dict(request["manifest"])
        manifest[request["module_file"]] = request["module_sha"]
        missing = [inner for inner, digest in manifest.items()
                   if inner.endswith(".py") and inner + ":" + digest not in self.code]
        if not missing:
            return
        import base64

        start, end = request["zip"]
        archive = _Archive("<task>", base64.b64decode(payload[start:end]))
        for inner in missing:
            try:
                self.code_for(archive, inner)
            except (SyntaxError, ValueError, KeyError, ImportError):
                pass  # never imported, or the child meets the same error where the plain path would


FINDER = ZipFinder()


def install_finder():
    if FINDER in sys.meta_path:
        return
    position = len(sys.meta_path)
    for index, finder in enumerate(sys.meta_path):
        if finder is importlib.machinery.PathFinder:
            position = index
            break
    sys.meta_path.insert(position, FINDER)


# -- the child: one task ------------------------------------------------------------------------------------------


def _exit_code(exc):
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    try:
        sys.stderr.write(str(code) + "\n")
    except Exception:
        pass
    return 1


def compile_payload(payload, request):
    """The payload as code objects that, run in turn in one namespace, do what the whole payload does.

    The AnsiballZ wrapper is the same for every task (compiled once per server); the part that calls it is compiled
    with a placeholder for the ~130 kB zip literal, which is then put into its constants (the same str the literal
    would have made), so the tokenizer never scans it. Line numbers stay those of the whole payload. Anything
    unexpected compiles the payload whole.
    """
    try:
        call = int(request["call"])
        start, end = request["zip"]
        if not 0 < call < start < end <= len(payload) or payload[start - 1:start] != b"'" or \
                payload[end:end + 1] != b"'":
            raise ValueError("unexpected layout")
        head = payload[:call]
        key = "<stdin>:" + hashlib.sha256(head).hexdigest()
        head_code = FINDER.code.get(key)
        if head_code is None:
            head_code = compile(head, "<stdin>", "exec", dont_inherit=True)
            FINDER.remember(key, head_code)
        # Future statements come first in the wrapper, so they are all in the head; carry them over.
        flags = head_code.co_flags & _FUTURE_FLAGS
        tail = b"\n" * head.count(b"\n") + payload[call:start] + ZIP_PLACEHOLDER.encode() + payload[end:]
        tail_code = compile(tail, "<stdin>", "exec", flags, dont_inherit=True)
        consts = tail_code.co_consts
        if consts.count(ZIP_PLACEHOLDER) != 1:
            raise ValueError("placeholder not found")
        zip_data = payload[start:end].decode("ascii")
        tail_code = tail_code.replace(co_consts=tuple(zip_data if c == ZIP_PLACEHOLDER else c for c in consts))
        return head_code, tail_code
    except (KeyError, ValueError, TypeError, SyntaxError, UnicodeDecodeError):
        return (compile(payload, "<stdin>", "exec", dont_inherit=True),)


def run_child(state, request, conn, fds, codes):
    """In the forked child: become the task's python3 process and run the payload. Never returns."""
    status = 1
    try:
        send_msg(conn, {"started": True})
        conn.close()
        for index in range(3):
            if fds[index] != index:
                os.dup2(fds[index], index)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        signal.set_wakeup_fd(-1)
        state.close_in_child()
        for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        os.chdir("/")
        os.umask(int(request.get("umask", 0o022)))
        env = dict(request["env"])
        for key, value in state.startup_additions.items():
            env.setdefault(key, value)
        os.environ.clear()
        os.environ.update(env)
        time.tzset()
        sys.argv = [""]
        if hasattr(sys, "orig_argv"):
            sys.orig_argv = [sys.executable]
        sys.path[:] = state.initial_path
        main = types.ModuleType("__main__")
        main.__dict__.update(__builtins__=builtins, __file__="<stdin>", __cached__=None, __annotations__={},
                             __loader__=importlib.machinery.BuiltinImporter, __package__=None, __spec__=None)
        sys.modules["__main__"] = main
        manifest = dict(request["manifest"])
        manifest[request["module_file"]] = request["module_sha"]
        FINDER.task_manifest = manifest
        FINDER.known_path = tuple(sys.path)
        try:
            if isinstance(codes, BaseException):
                raise codes
            for code in codes:
                exec(code, main.__dict__)
            status = 0
        except SystemExit as exc:
            status = _exit_code(exc)
        except BaseException as exc:  # what the interpreter does with an uncaught exception
            tb = exc.__traceback__
            tb = tb.tb_next if tb is not None else None  # this function's frame is not the script's
            sys.excepthook(type(exc), exc.with_traceback(tb), tb)
            status = 1
        try:
            threading = sys.modules.get("threading")
            if threading is not None and hasattr(threading, "_shutdown"):
                threading._shutdown()
        except BaseException:
            pass
        try:
            import atexit

            atexit._run_exitfuncs()
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                if stream is sys.stdout and status == 0:
                    status = 120
    finally:
        try:
            os._exit(status & 0xFF)
        except BaseException:
            os._exit(1)


# -- the zygote: one warm set of module_utils -----------------------------------------------------------------------


class Zygote(object):
    """Runs in the zygote process: warm module_utils, forks one child per task."""

    def __init__(self, server, ctrl):
        self.server = server
        self.ctrl = ctrl
        self.children = {}  # pid -> client connection (socket)
        self.poll = select.poll()
        self.stopping = False
        self.warm = False
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    # state the children must not keep
    startup_additions = property(lambda self: self.server.startup_additions)
    initial_path = property(lambda self: self.server.initial_path)

    def close_in_child(self):
        try:
            self.ctrl.close()
        except OSError:
            pass
        for conn in self.children.values():
            try:
                conn.close()
            except OSError:
                pass
        _close_all([self.wake_r, self.wake_w])
        global LOG_FD
        _close_all([LOG_FD])
        LOG_FD = -1

    def warm_up(self, payload, request):
        start, end = request["zip"]
        import base64

        archive = _Archive(WARM_ARCHIVE, base64.b64decode(payload[start:end]))
        FINDER.register(WARM_ARCHIVE, archive)
        sys.path.insert(0, WARM_ARCHIVE)
        saved_env = dict(os.environ)
        try:
            for name in WARM_MODULES:
                importlib.import_module(name)
            for name in WARM_OPTIONAL:
                if archive.find(name) is not None:
                    importlib.import_module(name)
        finally:
            sys.path[:] = [entry for entry in sys.path if entry != WARM_ARCHIVE]
            sys.path_importer_cache.pop(WARM_ARCHIVE, None)
            FINDER.forget(WARM_ARCHIVE)
            if dict(os.environ) != saved_env:
                os.environ.clear()
                os.environ.update(saved_env)
        imported = {}
        for module in list(sys.modules.values()):
            loader = getattr(getattr(module, "__spec__", None), "loader", None)
            if isinstance(loader, _Loader) and loader.archive is archive:
                imported[loader.inner] = archive.digest(loader.inner)
        self.warm = True
        return imported

    def serve(self):
        self.poll.register(self.ctrl.fileno(), select.POLLIN)
        self.poll.register(self.wake_r, select.POLLIN)
        while True:
            if self.stopping and not self.children:
                return
            try:
                events = self.poll.poll(1000)
            except InterruptedError:
                events = []
            for fd, _mask in events:
                if fd == self.ctrl.fileno():
                    self._control()
                elif fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
            self._reap()

    def _control(self):
        try:
            message, fds = recv_msg(self.ctrl, maxfds=4)
        except (EOFError, OSError, ValueError):
            self.poll.unregister(self.ctrl.fileno())
            self.stopping = True
            return
        if message.get("op") == "stop":
            _close_all(fds)
            self.stopping = True
            if message.get("abort"):
                for pid in list(self.children):
                    try:
                        os.kill(pid, signal.SIGTERM)
                    except OSError:
                        pass
            return
        self._run(message, fds)

    def _run(self, request, fds):
        conn = socket.socket(fileno=fds[0])
        task_fds = fds[1:4]
        try:
            conn.settimeout(30)
            payload = recv_exact(conn, int(request["length"]))
            conn.settimeout(None)
        except (OSError, EOFError, ValueError) as err:
            log("could not read a payload: %s" % err)
            conn.close()
            _close_all(task_fds)
            if request.get("warm"):
                send_msg(self.ctrl, {"warm": False, "error": "no payload", "retry": True})
                self.stopping = True
            return
        if request.get("warm"):
            try:
                imported = self.warm_up(payload, request)
            except BaseException as err:  # the task then runs the plain way; this zygote is useless
                log("warm-up failed: %r" % (err,))
                self._fallback(conn, task_fds, "warm-up failed")
                send_msg(self.ctrl, {"warm": False, "error": repr(err)[:500]})
                self.stopping = True
                return
            log("warm: %d module_utils files imported" % len(imported))
            send_msg(self.ctrl, {"warm": True, "imported": imported})
        try:
            FINDER.precompile(payload, request)
        except Exception as err:  # the child compiles what it imports, as the plain path does
            log("precompiling failed: %r" % (err,))
        try:
            codes = compile_payload(payload, request)
        except (SyntaxError, ValueError) as err:  # the child reports it as python3 would
            codes = err
        del payload
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        try:
            pid = os.fork()
        except OSError as err:
            self._fallback(conn, task_fds, "fork failed: %s" % err)
            return
        if pid == 0:
            run_child(self, request, conn, task_fds, codes)
        _close_all(task_fds)
        self.children[pid] = conn

    def _fallback(self, conn, task_fds, reason):
        try:
            send_msg(conn, {"fallback": reason})
        except OSError:
            pass
        conn.close()
        _close_all(task_fds)

    def _reap(self):
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is None:
                continue
            try:
                send_msg(conn, {"status": status})
            except OSError:
                pass
            conn.close()
            try:
                send_msg(self.ctrl, {"done": 1})
            except OSError:
                pass


# -- the master ----------------------------------------------------------------------------------------------------


class ZygoteHandle(object):
    def __init__(self, pid, ctrl):
        self.pid = pid
        self.ctrl = ctrl
        self.imported = None
        self.running = 0
        self.used = time.monotonic()


class Server(object):
    def __init__(self, config):
        self.config = config
        self.listener = socket.socket(fileno=int(config["listen_fd"]))
        self.owner_fd = int(config.get("owner_fd", -1))
        self.owner_pid = int(config.get("owner_pid", 0))
        self.idle = float(config.get("idle", 60))
        self.root_id = tuple(config.get("root_id") or ())
        self.zygotes = []
        self.refused = set()  # module_utils sets whose warm-up failed: not tried again
        self.last = time.monotonic()
        self.poll = select.poll()
        launch_env = config.get("env") or {}
        # What the shell and the interpreter added to the environment they were given (dash exports PWD; Python's
        # locale coercion may add LC_CTYPE): a task's python3 gets the same additions.
        self.startup_additions = dict(
            (key, value) for key, value in os.environ.items() if launch_env.get(key) != value
        )
        self.initial_path = list(sys.path)

    def root_ok(self):
        try:
            st = os.stat("/")
        except OSError:
            return False
        if st.st_nlink == 0:
            return False
        return not self.root_id or (st.st_dev, st.st_ino) == self.root_id

    def owner_alive(self):
        if self.owner_fd >= 0:
            ready = select.select([self.owner_fd], [], [], 0)[0]
            return not ready
        if self.owner_pid > 0:
            try:
                os.kill(self.owner_pid, 0)
            except ProcessLookupError:
                return False
            except OSError:
                return True
        return True

    def serve(self):
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:
                pass
        install_finder()
        self.poll.register(self.listener.fileno(), select.POLLIN)
        if self.owner_fd >= 0:
            self.poll.register(self.owner_fd, select.POLLIN)
        log("serving (python %s, idle %ss)" % (sys.version.split()[0], self.idle))
        reason = "stopped"
        while True:
            try:
                events = self.poll.poll(1000)
            except InterruptedError:
                events = []
            for fd, _mask in events:
                if fd == self.listener.fileno():
                    if self._accept() == "stop":
                        reason = "told to stop"
                        break
                elif fd == self.owner_fd:
                    pass  # checked below
                else:
                    self._zygote_event(fd)
            else:
                if not self.owner_alive():
                    reason = "the playbook process is gone"
                    self.stop_zygotes(abort=True)
                    break
                if not self.root_ok():
                    reason = "the image root is gone"
                    self.stop_zygotes(abort=True)
                    break
                busy = any(z.running for z in self.zygotes)
                if not busy and time.monotonic() - self.last > self.idle:
                    reason = "idle"
                    self.stop_zygotes()
                    break
                continue
            self.stop_zygotes()
            break
        log("exiting: %s" % reason)
        self.listener.close()

    def stop_zygotes(self, abort=False):
        for zygote in self.zygotes:
            try:
                send_msg(zygote.ctrl, {"op": "stop", "abort": abort})
            except OSError:
                pass
            zygote.ctrl.close()
        self.zygotes = []

    def _zygote_event(self, fd):
        for zygote in self.zygotes:
            if zygote.ctrl.fileno() == fd:
                break
        else:
            return
        try:
            message, _fds = recv_msg(zygote.ctrl)
        except (EOFError, OSError, ValueError):
            self._drop(zygote)
            return
        if message.get("done"):
            zygote.running = max(0, zygote.running - 1)
            self.last = time.monotonic()

    def _drop(self, zygote):
        try:
            self.poll.unregister(zygote.ctrl.fileno())
        except (KeyError, ValueError):
            pass
        zygote.ctrl.close()
        self.zygotes.remove(zygote)

    def _accept(self):
        try:
            conn, _address = self.listener.accept()
        except OSError:
            return None
        self.last = time.monotonic()
        fds = []
        try:
            conn.settimeout(30)
            request, fds = recv_msg(conn, maxfds=3)
            op = request.get("op")
            if request.get("v") != PROTOCOL:
                send_msg(conn, {"fallback": "protocol version"})
            elif op == "ping":
                send_msg(conn, {
                    "pid": os.getpid(), "python": list(sys.version_info[:3]),
                    "zygotes": [{"pid": z.pid, "imported": len(z.imported or ()), "running": z.running}
                                for z in self.zygotes],
                })
            elif op == "stop":
                send_msg(conn, {"stopping": True})
                conn.close()
                _close_all(fds)
                return "stop"
            elif op == "run":
                if len(fds) != 3:
                    send_msg(conn, {"fallback": "expected 3 file descriptors"})
                elif not self.root_ok():
                    send_msg(conn, {"fallback": "the image root changed"})
                else:
                    self._route(request, conn, fds)
                    fds = []
                    conn = None
            else:
                send_msg(conn, {"fallback": "unknown request"})
        except (OSError, EOFError, ValueError) as err:
            log("bad request: %r" % (err,))
        finally:
            _close_all(fds)
            if conn is not None:
                conn.close()
        self.last = time.monotonic()
        return None

    def _route(self, request, conn, fds):
        manifest = request.get("manifest") or {}
        zygote = None
        for candidate in self.zygotes:
            if all(manifest.get(path) == digest for path, digest in candidate.imported.items()):
                zygote = candidate
                break
        warm = zygote is None
        if warm:
            key = request.get("utils_hash", "")
            if key in self.refused:
                send_msg(conn, {"fallback": "these module_utils could not be imported"})
                conn.close()
                _close_all(fds)
                return
            if len(self.zygotes) >= MAX_ZYGOTES:
                idle = [z for z in self.zygotes if not z.running] or self.zygotes
                oldest = min(idle, key=lambda z: z.used)
                try:
                    send_msg(oldest.ctrl, {"op": "stop"})
                except OSError:
                    pass
                self._drop(oldest)
            zygote = self._fork_zygote(inherited=[conn.fileno()] + list(fds))
            if zygote is None:
                send_msg(conn, {"fallback": "could not fork"})
                conn.close()
                _close_all(fds)
                return
        forwarded = dict(request)
        forwarded["warm"] = warm
        try:
            send_msg(zygote.ctrl, forwarded, fds=[conn.fileno()] + list(fds))
        except OSError as err:
            log("zygote %d unreachable: %s" % (zygote.pid, err))
            self._drop(zygote)
            try:
                send_msg(conn, {"fallback": "zygote unreachable"})
            except OSError:
                pass
            conn.close()
            _close_all(fds)
            return
        conn.close()
        _close_all(fds)
        zygote.running += 1
        zygote.used = time.monotonic()
        if warm:
            # Wait for the warm-up (other requests wait in the backlog meanwhile; they are most likely for the
            # same zygote anyway).
            try:
                zygote.ctrl.settimeout(WARM_TIMEOUT)
                reply, _fds = recv_msg(zygote.ctrl)
                while "warm" not in reply:  # a "done" from this zygote cannot come first, but be lenient
                    if reply.get("done"):
                        zygote.running = max(0, zygote.running - 1)
                    reply, _fds = recv_msg(zygote.ctrl)
                zygote.ctrl.settimeout(None)
            except (EOFError, OSError, ValueError) as err:
                log("zygote %d did not warm up: %r" % (zygote.pid, err))
                reply = {"warm": False}
            if reply.get("warm"):
                zygote.imported = reply.get("imported") or {}
                self.poll.register(zygote.ctrl.fileno(), select.POLLIN)
            else:
                if not reply.get("retry"):
                    self.refused.add(request.get("utils_hash", ""))
                self.zygotes.remove(zygote)
                zygote.ctrl.close()
                try:
                    os.kill(zygote.pid, signal.SIGKILL)  # a stuck warm-up; its client then runs the plain way
                except OSError:
                    pass

    def _fork_zygote(self, inherited):
        """Fork a zygote; ``inherited`` are the master's copies of the pending request's fds (closed in it, or the
        client would never see the end of its pipes)."""
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError as err:
            log("fork failed: %s" % err)
            parent_end.close()
            child_end.close()
            return None
        if pid == 0:
            code = 0
            try:
                parent_end.close()
                self.listener.close()
                for zygote in self.zygotes:
                    zygote.ctrl.close()
                _close_all([self.owner_fd] + list(inherited))
                Zygote(self, child_end).serve()
            except BaseException as err:
                log("zygote failed: %r" % (err,))
                code = 1
            finally:
                os._exit(code)
        child_end.close()
        zygote = ZygoteHandle(pid, parent_end)
        self.zygotes.append(zygote)
        return zygote


def _reap_zygotes(signum, frame):
    while True:
        try:
            pid = os.waitpid(-1, os.WNOHANG)[0]
        except (ChildProcessError, InterruptedError):
            return
        if pid == 0:
            return


def main(config):
    global LOG_FD
    LOG_FD = os.dup(2)
    os.set_inheritable(LOG_FD, False)
    signal.signal(signal.SIGCHLD, _reap_zygotes)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    try:
        Server(config).serve()
    except BaseException as err:
        log("server failed: %r" % (err,))
        raise


if __name__ == "__pibake_forkserver__":
    main(CONFIG)  # noqa: F821  pylint: disable=undefined-variable  # CONFIG comes from the bootstrap (_forkserver.BOOT)
