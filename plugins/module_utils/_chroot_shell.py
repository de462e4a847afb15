# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Ansible's small housekeeping shell commands, done on the build host for the ``pibake.image.chroot`` connection.

Around a module run, Ansible's action plugins send a few shell one-liners through the connection: create the remote
temporary directory, make the files put there accessible (``chmod``), remove the directory, expand ``~user``, test
whether a path exists. In an image of another architecture each one starts the image's ``/bin/sh`` (and ``mkdir``,
``chmod``, ``rm``) under qemu-user, 0.1 to 0.3 s apiece, which is most of what a ``copy`` or ``template`` task costs
once modules run through the persistent interpreter. The image root is a directory on the build host, and the
commands run as root there as they would in the image, so the connection does them here instead.

``parse(cmd)`` recognises exactly the commands ansible-core's ``sh`` shell plugin builds, as
``_low_level_execute_command`` wraps them (``<shell> -c '<command> && sleep 0'``), and nothing else: a become
wrapper, a ``cd``, a shell other than sh/dash/bash, a path with anything the shell would expand, a ``chmod`` mode
other than ``[ugoa]+[+-][rwxX]+`` clauses all leave the command to the image. ``run(root, op, env)`` then does the
operation and returns ``(rc, stdout, stderr)`` as the shell would, or None whenever it cannot be sure to do exactly
what the shell would (an error, an unexpected file type, a mount point in a tree to remove, a user that is not in
the image's ``/etc/passwd``): the connection then runs the command in the image as before. Each of these commands
may safely run a second time after a partial first attempt, so falling back is always correct, and every error
message the user sees still comes from the image's own tools.

Paths are image paths: they are resolved below the root as the image sees them (``_chroot_paths``), and the final
steps work on directory descriptors opened without following symlinks, so a link in the image never leads to a
host file.

Pure Python, no Ansible imports: unit tests drive it directly.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
from dataclasses import dataclass, replace
from typing import Mapping, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils._chroot_paths import is_inside, resolve_in_root
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._forkserver import split_shell_command

# Shells whose -c handles these commands the same way (the image's /bin/sh is dash on Debian).
SHELLS = frozenset({"sh", "dash", "bash"})
_SLEEP = " && sleep 0"  # what _low_level_execute_command appends for the default executable
_DEVNULL = " > /dev/null 2>&1"
# An absolute path that `echo` inside backquotes prints unchanged: no blank (field splitting), no glob character,
# no quote, backslash, $, backquote or ~, no shell operator.
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_.,:@%+=/-]*\Z")
_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_MKDTEMP = re.compile(
    r'(?:\( umask (?P<umask>[0-7]{1,4}) && )?'
    r'mkdir -p "` echo (?P<base>[^ `"]+) `"&& mkdir "` echo (?P<tmp>[^ `"]+) `" '
    r'&& echo (?P<name>[^ =`"]+)="` echo (?P<tmp2>[^ `"]+) `"'
    r'(?(umask) \))\Z'
)
_USER_HOME = re.compile(r"~(?P<user>[_.A-Za-z0-9][-_.A-Za-z0-9]*)?\Z")  # the shell plugin's expand_user forms
_SYMBOLIC = re.compile(r"[ugoa]+[+-][rwxX]+(?:,[ugoa]+[+-][rwxX]+)*\Z")

_WHO = {"u": 0o700, "g": 0o070, "o": 0o007}
_PERM = {"r": 0o444, "w": 0o222, "x": 0o111}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Op:
    """One recognised command: ``kind`` is mkdtemp, rm, chmod, home or exists."""

    kind: str
    shell: str = ""  # the shell the command was given to
    paths: Tuple[str, ...] = ()
    name: str = ""  # mkdtemp: the new directory's name; home: the user ("" for the current one)
    umask: Optional[int] = None  # mkdtemp
    recurse: bool = False  # rm
    mode: str = ""  # chmod


def _plain(path: str) -> bool:
    """An absolute path the shell takes literally, with no ``.``/``..`` component (mkdir -p makes those real)."""
    return bool(_PLAIN_PATH.match(path)) and not any(part in (".", "..") for part in path.split("/"))


def parse(cmd: str) -> Optional[Op]:
    """The housekeeping operation ``cmd`` is, or None for anything else (which then runs in the image)."""
    split = split_shell_command(cmd)
    if split is None or os.path.basename(split[0]) not in SHELLS:
        return None
    shell, inner = split
    if not inner.endswith(_SLEEP):
        return None
    op = _parse_mkdtemp(inner[: -len(_SLEEP)]) or _parse_simple(inner[: -len(_SLEEP)])
    return replace(op, shell=shell) if op is not None else None


def _parse_mkdtemp(inner: str) -> Optional[Op]:
    match = _MKDTEMP.match(inner)
    if match is None:
        return None
    base, tmp, name = match.group("base"), match.group("tmp"), match.group("name")
    if tmp != match.group("tmp2") or tmp != os.path.join(base, name) or not _NAME.match(name):
        return None
    if not (_plain(base) and _plain(tmp)) or name in (".", ".."):
        return None
    umask = match.group("umask")
    return Op("mkdtemp", paths=(base, tmp), name=name, umask=int(umask, 8) if umask is not None else None)


def _parse_simple(inner: str) -> Optional[Op]:
    if inner.startswith("echo "):
        match = _USER_HOME.match(inner[len("echo "):])
        if match is None:
            return None
        return Op("home", name=match.group("user") or "")
    redirected = inner.endswith(_DEVNULL)
    try:
        words = shlex.split(inner[: -len(_DEVNULL)] if redirected else inner)
    except ValueError:
        return None
    if redirected:
        if words[:2] != ["rm", "-f"] or len(words) not in (3, 4) or (len(words) == 4 and words[2] != "-r"):
            return None
        path = words[-1]
        if not path.startswith("/") or inner != " ".join(words[:-1] + [shlex.quote(path)]) + _DEVNULL:
            return None
        return Op("rm", paths=(path,), recurse=len(words) == 4)
    if len(words) == 3 and words[:2] == ["test", "-e"] and words[2].startswith("/"):
        if inner != f"test -e {shlex.quote(words[2])}":
            return None
        return Op("exists", paths=(words[2],))
    if len(words) >= 3 and words[0] == "chmod" and _SYMBOLIC.match(words[1]):
        paths = tuple(words[2:])
        if not all(p.startswith("/") for p in paths) or inner != shlex.join(words):
            return None
        return Op("chmod", paths=paths, mode=words[1])
    return None


# -- doing it on the host -------------------------------------------------------------------------------------------


Outcome = Optional[Tuple[int, bytes, bytes]]


def run(root: str, op: Op, env: Optional[Mapping[str, str]] = None) -> Outcome:
    """Do ``op`` below canonical image root ``root``; ``(rc, stdout, stderr)``, or None: run it in the image."""
    handler = {"mkdtemp": _mkdtemp, "rm": _rm, "chmod": _chmod, "home": _home, "exists": _exists}.get(op.kind)
    if handler is None:
        return None
    try:
        return handler(root, op, env or {})
    except (OSError, PibakeError, ValueError):
        return None


def _open_dir(root: str, host_path: str, create: bool = False) -> int:
    """A descriptor of directory ``host_path`` (already resolved below ``root``), opened one component at a time
    from the root without following any symlink. With ``create``, missing components are made as ``mkdir -p``
    makes them under the process umask: the last one 0777 minus the umask, the ones above it with u+wx added."""
    if not is_inside(root, host_path):
        raise PibakeError(f"{host_path} is not below {root}")
    rest = host_path[len(root.rstrip("/")):]
    parts = [p for p in rest.split("/") if p]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, part in enumerate(parts):
            made = False
            if create:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                    made = True
                except FileExistsError:
                    pass
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            if made and index < len(parts) - 1:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & 0o300 != 0o300:
                    os.fchmod(fd, mode | 0o300)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _mkdtemp(root: str, op: Op, env: Mapping[str, str]) -> Outcome:
    """``( umask U && mkdir -p BASE && mkdir BASE/NAME && echo NAME=BASE/NAME )``."""
    base, tmp = op.paths
    old = os.umask(op.umask) if op.umask is not None else None
    try:
        parent_fd = _open_dir(root, resolve_in_root(root, base), create=True)
        try:
            os.mkdir(op.name, 0o777, dir_fd=parent_fd)
        finally:
            os.close(parent_fd)
    finally:
        if old is not None:
            os.umask(old)
    return 0, f"{op.name}={tmp}\n".encode(), b""


def _rm(root: str, op: Op, env: Mapping[str, str]) -> Outcome:
    """``rm -f [-r] PATH > /dev/null 2>&1`` (only what rm would do without an error; else None)."""
    path = op.paths[0]
    trimmed = path.rstrip("/")
    name = os.path.basename(trimmed)
    if not trimmed or name in (".", ".."):
        return None
    parent_fd = _open_dir(root, resolve_in_root(root, os.path.dirname(trimmed) or "/"))
    try:
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return 0, b"", b""  # -f
        if stat.S_ISDIR(st.st_mode):
            if not op.recurse or not _one_filesystem(parent_fd, name, st.st_dev):
                return None
            shutil.rmtree(name, dir_fd=parent_fd)
        elif stat.S_ISLNK(st.st_mode) and path != trimmed:
            return None  # `rm -r link/` acts on what the link points to: leave that to rm
        else:
            os.unlink(name, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)
    return 0, b"", b""


def _one_filesystem(parent_fd: int, name: str, dev: int) -> bool:
    """True when nothing below directory ``name`` is a mount point (rm -r would descend into it)."""
    for _dirpath, dirnames, _filenames, dir_fd in os.fwalk(name, dir_fd=parent_fd, follow_symlinks=False):
        for sub in dirnames:
            if os.stat(sub, dir_fd=dir_fd, follow_symlinks=False).st_dev != dev:
                return False
        if os.fstat(dir_fd).st_dev != dev:
            return False
    return True


def apply_symbolic(mode: str, current: int, is_dir: bool) -> int:
    """The permission bits ``chmod MODE`` gives a file with mode bits ``current``; ``MODE`` matches _SYMBOLIC."""
    if not _SYMBOLIC.match(mode):
        raise ValueError(f"unsupported mode {mode}")
    bits = stat.S_IMODE(current)
    for clause in mode.split(","):
        who_part, op_char, perms = re.match(r"([ugoa]+)([+-])(.*)", clause).groups()  # type: ignore[union-attr]
        who = 0
        for letter in who_part:
            who |= 0o777 if letter == "a" else _WHO[letter]
        change = 0
        for letter in perms:
            if letter == "X":
                if is_dir or bits & 0o111:
                    change |= 0o111
            else:
                change |= _PERM[letter]
        change &= who
        bits = bits | change if op_char == "+" else bits & ~change
    return bits


def _chmod(root: str, op: Op, env: Mapping[str, str]) -> Outcome:
    """``chmod [ugoa]+[+-][rwxX]+ PATH...`` (chmod follows symlinks, as the image resolves them)."""
    for path in op.paths:
        target = resolve_in_root(root, path)
        fd = os.open(target, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            actual = os.readlink(f"/proc/self/fd/{fd}")
            if not is_inside(root, actual):
                return None
            st = os.fstat(fd)
            if stat.S_ISLNK(st.st_mode):
                return None  # swapped for a link since it was resolved
            wanted = apply_symbolic(op.mode, st.st_mode, stat.S_ISDIR(st.st_mode))
            if wanted != stat.S_IMODE(st.st_mode):
                os.chmod(f"/proc/self/fd/{fd}", wanted)
        finally:
            os.close(fd)
    return 0, b"", b""


def _home(root: str, op: Op, env: Mapping[str, str]) -> Outcome:
    """``echo ~`` ($HOME) or ``echo ~user`` (the user's entry in the image's /etc/passwd)."""
    if not op.name:
        home = env.get("HOME")
    else:
        home = passwd_home(root, op.name)
    if not home or "\\" in home:  # unset, empty, or something echo would rewrite: let the image's shell say it
        return None
    return 0, (home + "\n").encode("utf-8", "surrogateescape"), b""


def _read_image_file(root: str, image_path: str) -> str:
    fd = os.open(resolve_in_root(root, image_path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not is_inside(root, os.readlink(f"/proc/self/fd/{fd}")) or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PibakeError(f"{image_path} in the image is not a plain file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(4 << 20).decode("utf-8", "surrogateescape")
    finally:
        os.close(fd)


def passwd_home(root: str, user: str) -> Optional[str]:
    """Home directory of ``user`` from the image's /etc/passwd, when the image looks users up there first."""
    try:
        nsswitch = _read_image_file(root, "/etc/nsswitch.conf")
    except (OSError, PibakeError):
        nsswitch = ""  # glibc without nsswitch.conf: files
    for line in nsswitch.splitlines():
        words = line.split("#", 1)[0].split()
        if words and words[0] == "passwd:" and (len(words) < 2 or words[1] != "files"):
            return None
    for line in _read_image_file(root, "/etc/passwd").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[0] == user:
            return fields[5]
    return None


def _exists(root: str, op: Op, env: Mapping[str, str]) -> Outcome:
    """``test -e PATH``: exit status only."""
    target = resolve_in_root(root, op.paths[0])
    try:
        os.stat(target, follow_symlinks=False)
    except FileNotFoundError:
        return 1, b"", b""
    return 0, b"", b""
