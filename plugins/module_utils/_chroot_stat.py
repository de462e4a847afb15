# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The ``stat`` that Ansible's action plugins run internally, answered on the build host for ``pibake.image.chroot``.

Before ``copy`` and ``template`` (and ``fetch``, ``assemble``, ``unarchive``) do anything, their action plugin asks
the target about the destination with ``ActionBase._execute_remote_stat``: a run of ``ansible.builtin.stat`` with
``path``, ``follow``, ``get_checksum``, ``checksum_algorithm=sha1`` and ``get_size=false`` (an option only
``win_stat`` knows, sent with ``_ansible_ignore_unknown_opts``, so no playbook task looks like it). In an image of
another architecture that is one more module run plus an ``lsattr`` process under qemu-user, most of what such a
task costs. The image root is a directory on the build host, and stat runs as root there as it would in the image,
so the connection answers exactly that call here, with the same result the module would print.

``parse(cmd_words, payload)`` recognises the call (nothing else: a user's stat task, another module, no_log, a path
the module would expand); ``run(root, request)`` returns the module's stdout, or None whenever the answer could
differ from the module's (a user or group not in the image's files, a ``file`` command in the image for the MIME
type, file attributes other than none or ``e``, a symlink loop, any error): the connection then runs the real module.

Pure Python, no Ansible imports: unit tests drive it directly.
"""

from __future__ import annotations

import array
import ast
import fcntl
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional

from ansible_collections.pibake.image.plugins.module_utils._chroot_paths import is_inside, resolve_in_root
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

MODULE_FQN = "ansible.modules.stat"
# The options _execute_remote_stat sends, in its order (the module echoes them back in this order).
INTERNAL_OPTIONS = ("path", "follow", "get_checksum", "get_size", "checksum_algorithm")
SBIN = ("/sbin", "/usr/sbin", "/usr/local/sbin")  # what get_bin_path searches besides PATH

_MAIN_CALL = b'\nif __name__ == "__main__":\n    _ansiballz_main(\n'
_FQN = re.compile(rb"^module_fqn='([A-Za-z0-9_.]+)',$", re.M)
_PARAMS = re.compile(rb"^params=('(?:[^'\\\n]|\\.)*'),$", re.M)

# Linux inode flags (FS_IOC_GETFLAGS); lsattr shows FS_EXTENT_FL as "e", which the module reports as "extents".
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_GETVERSION = 0x80087601
FS_EXTENT_FL = 0x00080000


@dataclass(frozen=True)
class Request:
    """One internal stat: its options and the task's environment (PATH decides which tools the module finds)."""

    path: str
    follow: bool
    get_checksum: bool
    module_args: Dict[str, object]  # as the module echoes them under invocation


def parse(module_fqn_and_params: Optional[tuple]) -> Optional[Request]:
    """A Request when ``(module_fqn, params)`` is _execute_remote_stat's call, else None."""
    if not module_fqn_and_params:
        return None
    fqn, params = module_fqn_and_params
    if fqn != MODULE_FQN or not isinstance(params, dict):
        return None
    args = params.get("ANSIBLE_MODULE_ARGS")
    if not isinstance(args, dict):
        return None
    options = [key for key in args if not key.startswith("_ansible_")]
    if options != list(INTERNAL_OPTIONS) or args.get("_ansible_ignore_unknown_opts") is not True:
        return None
    if args.get("_ansible_no_log") is not False or args["get_size"] is not False:
        return None
    if args["checksum_algorithm"] != "sha1" or not isinstance(args["follow"], bool):
        return None
    if not isinstance(args["get_checksum"], bool):
        return None
    path = args["path"]
    # type=path expands ~ and $VARS in the module; a relative path depends on its working folder
    if not isinstance(path, str) or not path.startswith("/") or "$" in path or "\x00" in path:
        return None
    module_args = {key: args[key] for key in INTERNAL_OPTIONS}
    module_args.update(get_mime=True, get_attributes=True)
    return Request(path, args["follow"], args["get_checksum"], module_args)


def payload_call(data: bytes) -> Optional[tuple]:
    """``(module_fqn, params)`` read from an ansible-core 2.19 AnsiballZ payload, or None."""
    if not data or b"\n_ANSIBALLZ_WRAPPER = True\n" not in data[:4096]:
        return None
    call = data.rfind(_MAIN_CALL)
    if call < 0:
        return None
    tail = data[call + len(_MAIN_CALL):]
    fqn = _FQN.search(tail)
    params = _PARAMS.search(tail)
    if fqn is None or params is None:
        return None
    try:
        text = ast.literal_eval(params.group(1).decode("utf-8"))
        return fqn.group(1).decode("ascii"), json.loads(text)
    except (ValueError, SyntaxError, UnicodeDecodeError, TypeError):
        return None


# -- answering it ---------------------------------------------------------------------------------------------------


def run(root: str, request: Request, env: Mapping[str, str]) -> Optional[bytes]:
    """The stat module's stdout for ``request`` in the image at canonical ``root``; None: run the module."""
    try:
        result = _stat(root, request, env)
    except (OSError, PibakeError, ValueError):
        return None
    if result is None:
        return None
    return (json.dumps({"changed": False, "stat": result, "invocation": {"module_args": request.module_args}})
            + "\n").encode("utf-8")


def _image_path(root: str, host_path: str) -> str:
    return "/" + host_path[len(root.rstrip("/")):].lstrip("/")


def _stat(root: str, request: Request, env: Mapping[str, str]) -> Optional[dict]:
    path = request.path
    resolved = resolve_in_root(root, path)  # every link followed, as os.stat / os.access / open in the module
    if path.rstrip("/") == "" or path.endswith("/") or os.path.basename(path) in (".", ".."):
        named = resolved  # a trailing slash (or . and ..) makes even lstat follow the last link
    else:
        parent = resolve_in_root(root, os.path.dirname(path.rstrip("/")) or "/")
        named = os.path.join(parent, os.path.basename(path.rstrip("/")))
    try:
        st = os.stat(resolved if request.follow else named, follow_symlinks=False)
    except FileNotFoundError:
        return {"exists": False}
    if request.follow and stat.S_ISLNK(st.st_mode):
        return None  # changed under us
    out = format_output(path, st)
    for key, flag in (("readable", os.R_OK), ("writeable", os.W_OK), ("executable", os.X_OK)):
        out[key] = os.access(resolved, flag)
    if out["islnk"]:
        out["lnk_source"] = _image_path(root, resolved)
        out["lnk_target"] = os.readlink(named)
    users = _names(root, "passwd", st.st_uid)
    groups = _names(root, "group", st.st_gid)
    if users is None or groups is None:
        return None
    if users:
        out["pw_name"] = users
    if groups:
        out["gr_name"] = groups
    if out["isreg"] and out["readable"] and request.get_checksum:
        out["checksum"] = _sha1(root, resolved)
    if _find_tool(root, "file", env) is not None:
        return None  # the module would ask libmagic
    out["mimetype"] = out["charset"] = "unknown"
    out["version"] = None
    out["attributes"] = []
    out["attr_flags"] = ""
    if _find_tool(root, "lsattr", env) is not None:
        attrs = _lsattr(root, named, resolved)
        if attrs is None:
            return None
        out.update(attrs)
    return out


def format_output(path: str, st: os.stat_result) -> dict:
    """The fields the stat module takes from the stat result, in its order."""
    mode = st.st_mode
    out = dict(
        exists=True, path=path, mode="%04o" % stat.S_IMODE(mode),
        isdir=stat.S_ISDIR(mode), ischr=stat.S_ISCHR(mode), isblk=stat.S_ISBLK(mode), isreg=stat.S_ISREG(mode),
        isfifo=stat.S_ISFIFO(mode), islnk=stat.S_ISLNK(mode), issock=stat.S_ISSOCK(mode),
        uid=st.st_uid, gid=st.st_gid, size=st.st_size, inode=st.st_ino, dev=st.st_dev, nlink=st.st_nlink,
        atime=st.st_atime, mtime=st.st_mtime, ctime=st.st_ctime,
    )
    out.update(
        wusr=bool(mode & stat.S_IWUSR), rusr=bool(mode & stat.S_IRUSR), xusr=bool(mode & stat.S_IXUSR),
        wgrp=bool(mode & stat.S_IWGRP), rgrp=bool(mode & stat.S_IRGRP), xgrp=bool(mode & stat.S_IXGRP),
        woth=bool(mode & stat.S_IWOTH), roth=bool(mode & stat.S_IROTH), xoth=bool(mode & stat.S_IXOTH),
        isuid=bool(mode & stat.S_ISUID), isgid=bool(mode & stat.S_ISGID),
        blocks=st.st_blocks, block_size=st.st_blksize, device_type=st.st_rdev,
    )
    return out


def _open_inside(root: str, host_path: str, flags: int) -> int:
    fd = os.open(host_path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not is_inside(root, os.readlink(f"/proc/self/fd/{fd}")):
            raise PibakeError(f"{host_path} left the image root")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sha1(root: str, host_path: str) -> str:
    fd = _open_inside(root, host_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PibakeError("not a regular file any more")
        digest = hashlib.sha1()
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)
    finally:
        os.close(fd)


def _read_image_text(root: str, image_path: str) -> Optional[str]:
    try:
        fd = _open_inside(root, resolve_in_root(root, image_path), os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise PibakeError(f"{image_path} is not a plain file")
        return handle.read(16 << 20).decode("utf-8", "surrogateescape")


def _names(root: str, database: str, number: int) -> Optional[str]:
    """The name getpwuid/getgrgid gives ``number`` in the image: "" for none, None when it cannot be told here
    (the image asks something before its files, or something after them and the files do not have it)."""
    sources: List[str] = ["files"]
    for line in (_read_image_text(root, "/etc/nsswitch.conf") or "").splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] == f"{database}:":
            sources = words[1:]
    if not sources or sources[0] != "files":
        return None
    for line in (_read_image_text(root, f"/etc/{database}") or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2] == str(number) and fields[0] and fields[0][0] not in "+-":
            return fields[0]
    if len(sources) > 1:
        return None
    return ""


def _find_tool(root: str, name: str, env: Mapping[str, str]) -> Optional[str]:
    """Where the module's get_bin_path would find ``name`` in the image (PATH, then the sbin folders)."""
    folders = env.get("PATH", "").split(os.pathsep)
    folders += [folder for folder in SBIN if folder not in folders]
    for folder in folders:
        if not folder:
            continue
        if not folder.startswith("/"):
            raise PibakeError("relative PATH entry")  # relative to the module's working folder
        try:
            st = os.stat(resolve_in_root(root, os.path.join(folder, name)), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not stat.S_ISDIR(st.st_mode) and st.st_mode & 0o111:
            return os.path.join(folder, name)
    return None


def _lsattr(root: str, named: str, host_path: str) -> Optional[dict]:
    """What ``lsattr -vd`` gives the module: version and flags; None when they are not plain enough to be sure.

    ``named`` is the path as given (its last link not followed), ``host_path`` the same with every link followed.
    """
    st = os.stat(named, follow_symlinks=False)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        return {}  # lsattr refuses symlinks and other file types: the module keeps its defaults
    fd = _open_inside(root, host_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        buf = array.array("l", [0])
        try:
            fcntl.ioctl(fd, FS_IOC_GETVERSION, buf, True)
            version = buf[0] & 0xFFFFFFFF
            buf[0] = 0
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
            flags = buf[0] & 0xFFFFFFFF
        except OSError:
            return {}  # lsattr fails the same way (tmpfs has no version): the module keeps its defaults
    finally:
        os.close(fd)
    if flags & ~FS_EXTENT_FL:
        return None  # other attributes: leave the letters and their order to lsattr
    if flags & FS_EXTENT_FL:
        return {"version": str(version), "attributes": ["extents"], "attr_flags": "e"}
    return {"version": str(version), "attributes": [], "attr_flags": ""}
