# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Resolve and copy paths inside an image root so that no symlink in the image can reach a host file.

An image's symlinks are meant for the image: ``/etc/x -> /etc/shadow`` names the image's shadow file. When the
build host follows such a link itself it lands on the host's file instead. Everything here therefore walks a path
one component at a time below a root directory, reads each symlink with ``readlink`` and re-roots it: absolute
targets restart at the root, ``..`` never climbs above it, and the number of links followed is limited like the
kernel does. The resolved path is, by construction, a path below the root.

Between resolving a path and opening it, something could swap a directory for a symlink. The copy helpers
therefore open the final file (or its directory) with ``O_NOFOLLOW`` and check through ``/proc/self/fd`` that
what they actually opened lies inside the root before they read or write a byte.

Pure Python, no Ansible imports: the connection plugin ``pibake.image.chroot`` is a thin layer over it.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import List, Optional

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

# Same limit as Linux's MAXSYMLINKS: links followed while resolving one path.
MAX_SYMLINKS = 40

# Mode of a file put into the image where none existed: what root's usual umask 022 gives (dd, cp, sftp).
NEW_FILE_MODE = 0o644

_COPY_CHUNK = 1024 * 1024


def real_root(root: str) -> str:
    """The canonical host path of ``root``; PibakeError unless it is an existing directory."""
    if not root:
        raise PibakeError("No image root given; set ansible_host or pibake_chroot_root to the mounted root directory.")
    path = os.path.realpath(os.path.expanduser(root))
    if not os.path.isdir(path):
        raise PibakeError(
            f"Image root {root} is not a directory; attach the image first and point ansible_host "
            f"(or pibake_chroot_root) at its mounted root."
        )
    return path


def _split(path: str) -> List[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def resolve_in_root(root: str, path: str, *, max_symlinks: int = MAX_SYMLINKS) -> str:
    """Host path of image path ``path`` with every symlink followed as the image would see it.

    ``root`` must be a canonical directory path (see :func:`real_root`). ``path`` is taken relative to the image's
    ``/`` whether or not it starts with a slash. Components that do not exist are kept as they are (so a file about
    to be created resolves too). The result always equals ``root`` or lies below it.
    """
    root = root.rstrip("/") or "/"
    pending = _split(path)
    pending.reverse()  # a stack: the next component is at the end
    done: List[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = _join(root, done + [part])
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            done.append(part)  # to be created, or below something missing: nothing further can be a link
            continue
        except NotADirectoryError:
            raise PibakeError(
                f"Path {path} in the image goes through {_image_path(done)}, which is not a directory; fix the path."
            ) from None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > max_symlinks:
                raise PibakeError(
                    f"Path {path} in the image has more than {max_symlinks} levels of symbolic links; "
                    f"fix the symlink loop in the image."
                )
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            pending.extend(reversed(_split(target)))
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            raise PibakeError(
                f"Path {path} in the image goes through {_image_path(done + [part])}, which is not a directory; "
                f"fix the path."
            )
        done.append(part)
    result = _join(root, done)
    if not is_inside(root, result):  # cannot happen: no component is empty, '.', '..' or holds a slash
        raise PibakeError(f"Path {path} resolved outside the image root {root}; report this as a pibake bug.")
    return result


def _join(root: str, parts: List[str]) -> str:
    return os.path.join(root, *parts) if parts else root


def _image_path(parts: List[str]) -> str:
    return "/" + "/".join(parts)


def is_inside(root: str, path: str) -> bool:
    """True when host path ``path`` is ``root`` itself or lies below it (both canonical)."""
    root = root.rstrip("/") or "/"
    if root == "/":
        return path.startswith("/")
    return path == root or path.startswith(root + "/")


def _fd_path(fd: int) -> Optional[str]:
    """Host path the kernel records for an open file descriptor, or None where /proc is unavailable."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _check_fd_inside(root: str, fd: int, shown: str) -> None:
    actual = _fd_path(fd)
    if actual is not None and not is_inside(root, actual):
        raise PibakeError(
            f"{shown} in the image changed while it was being opened and now leads outside the image root; "
            f"nothing was copied, retry once the image is no longer being modified."
        )


def executable_in_root(root: str, executable: str) -> str:
    """Host path of ``executable`` inside ``root``, following the image's symlinks (usrmerge) safely.

    PibakeError unless it is a regular file with an execute bit.
    """
    if not executable.startswith("/"):
        raise PibakeError(f"The shell executable {executable} must be an absolute path inside the image; fix it.")
    host_path = resolve_in_root(root, executable)
    try:
        st = os.stat(host_path, follow_symlinks=False)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        raise PibakeError(
            f"{root} does not look like an image root: it holds no executable {executable}; "
            f"point ansible_host (or pibake_chroot_root) at the mounted root filesystem."
        )
    return host_path


def _copy_fd(src_fd: int, dst_fd: int) -> None:
    """Copy everything from ``src_fd`` to ``dst_fd`` in the kernel where it can, in Python where it cannot."""
    try:
        while os.copy_file_range(src_fd, dst_fd, _COPY_CHUNK * 64):
            pass
        return
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM):
            raise
    # copy_file_range refused before writing anything it could not finish; continue from the current offsets
    while True:
        chunk = os.read(src_fd, _COPY_CHUNK)
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            written = os.write(dst_fd, view)
            view = view[written:]


def put_into_root(root: str, local_path: str, image_path: str) -> str:
    """Copy host file ``local_path`` to ``image_path`` inside ``root`` atomically; return the host path written.

    The data goes to a temporary file in the destination directory, which is then renamed over the destination.
    Owner and mode are never taken from the local file: a new file becomes root:root (when running as root) with
    mode 0644; a file that already existed keeps its owner and mode, as if it had been overwritten in place.
    """
    target = resolve_in_root(root, image_path)
    if target == root:
        raise PibakeError(f"Cannot write {image_path}: it is the image's root directory; give a file path.")
    parent, name = os.path.split(target)
    try:
        dir_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise PibakeError(
            f"Cannot write {image_path}: directory {os.path.dirname(image_path) or '/'} does not exist in the image; "
            f"create it first."
        ) from None
    try:
        _check_fd_inside(root, dir_fd, os.path.dirname(image_path) or "/")
        try:
            existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and not (stat.S_ISREG(existing.st_mode) or stat.S_ISLNK(existing.st_mode)):
            kind = "a directory" if stat.S_ISDIR(existing.st_mode) else "not a regular file"
            raise PibakeError(f"Cannot write {image_path}: it is {kind} in the image; give a file path.")
        if existing is not None and stat.S_ISREG(existing.st_mode):
            mode, uid, gid = stat.S_IMODE(existing.st_mode), existing.st_uid, existing.st_gid
        else:
            mode, uid, gid = NEW_FILE_MODE, 0, 0
        with open(local_path, "rb") as src:
            tmp_name = f".{name[:200]}.pibake-{secrets.token_hex(4)}"
            tmp_fd = os.open(
                tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
            )
            try:
                try:
                    _copy_fd(src.fileno(), tmp_fd)
                    if os.geteuid() == 0:
                        os.fchown(tmp_fd, uid, gid)
                    os.fchmod(tmp_fd, mode)  # after chown, which clears set-id bits
                finally:
                    os.close(tmp_fd)
                os.rename(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            except BaseException:
                try:
                    os.unlink(tmp_name, dir_fd=dir_fd)
                except OSError:
                    pass
                raise
    finally:
        os.close(dir_fd)
    return target


def fetch_from_root(root: str, image_path: str, local_path: str) -> str:
    """Copy regular file ``image_path`` inside ``root`` to host path ``local_path``; return the host path read."""
    source = resolve_in_root(root, image_path)
    try:
        src_fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise PibakeError(f"Cannot fetch {image_path}: it does not exist in the image.") from None
    except OSError as err:
        raise PibakeError(f"Cannot fetch {image_path} from the image: {err.strerror}.") from None
    try:
        _check_fd_inside(root, src_fd, image_path)
        if not stat.S_ISREG(os.fstat(src_fd).st_mode):
            raise PibakeError(f"Cannot fetch {image_path}: it is not a regular file in the image.")
        os.set_blocking(src_fd, True)
        with open(local_path, "wb") as dst:
            _copy_fd(src_fd, dst.fileno())
    finally:
        os.close(src_fd)
    return source
