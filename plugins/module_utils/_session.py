# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The image session: make a disk image (or a rootfs folder) ready for the chroot connection, and undo it.

attach:  [grow] -> root loop -> [fsck + resize2fs] -> mount root -> boot partition at /boot/firmware ->
         /proc /sys /dev /dev/pts, tmpfs /run -> build DNS -> policy-rc.d guard -> lease guard process
detach:  kill leftovers -> restore policy-rc.d and resolv.conf -> fstrim -> unmount all -> detach loops ->
         write the FAT back (only when its content changed)
reap:    the same without writing anything back, for sessions whose owner died (Ctrl-C, kill -9, crash).

Every loop device and mount is recorded in the lease before it is made, so reaping finds exactly what the
session made: loops by backing file and offset, mounts by path.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import shutil
import signal
import stat
import time
from typing import Dict, List, Optional

from ansible_collections.pibake.image.plugins.module_utils import _binfmt, _fatstage, _lease, _loop, _mounts
from ansible_collections.pibake.image.plugins.module_utils._chroot_paths import resolve_in_root
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._partitions import (
    grow_last_partition,
    read_table,
    require_pi_layout,
)
from ansible_collections.pibake.image.plugins.module_utils._run import run, text

POLICY_RC_D = "/usr/sbin/policy-rc.d"
POLICY_DENY_ALL = b"#!/bin/sh\n# pibake: no service may start while an image is being built.\nexit 101\n"
RESOLV_CONF = "/etc/resolv.conf"

# (source, target inside root, how) in mount order; "bind" mounts are made private.
SYSTEM_MOUNTS = (
    ("proc", "/proc", "proc"),
    ("sysfs", "/sys", "sysfs"),
    ("/dev", "/dev", "bind"),
    ("/dev/pts", "/dev/pts", "bind"),
    # A fresh tmpfs, not the host's /run: systemctl inside the chroot must not reach the host's systemd.
    ("tmpfs", "/run", "tmpfs"),
)


# ---------------------------------------------------------------- helpers


def _inside(root: str, path: str) -> str:
    return resolve_in_root(root, path)


def _probe_fstype(image: str, offset: int) -> str:
    proc = run(["blkid", "-p", "-O", str(offset), "-o", "value", "-s", "TYPE", image], check=False)
    return text(proc).strip()


def _host_resolv_conf() -> bytes:
    """The host's resolver config, skipping systemd-resolved's stub (127.0.0.53 is unreachable from a chroot)."""
    for candidate in ("/run/systemd/resolve/resolv.conf", "/etc/resolv.conf"):
        try:
            with open(candidate, "rb") as handle:
                content = handle.read()
        except OSError:
            continue
        if candidate == "/etc/resolv.conf" or b"nameserver" in content:
            return content
    return b"nameserver 1.1.1.1\n"


def _snapshot_file(path: str) -> Dict[str, object]:
    """What is at ``path`` (a host path inside the image), so it can be put back exactly."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return {"kind": "absent"}
    if stat.S_ISLNK(info.st_mode):
        return {"kind": "symlink", "target": os.readlink(path)}
    with open(path, "rb") as handle:
        content = handle.read()
    return {
        "kind": "file",
        "content": base64.b64encode(content).decode(),
        "mode": stat.S_IMODE(info.st_mode),
        "uid": info.st_uid,
        "gid": info.st_gid,
    }


def _write_file(path: str, content: bytes, mode: int, uid: int = 0, gid: int = 0) -> None:
    if os.path.lexists(path) and not os.path.isdir(path):
        os.unlink(path)
    temp = f"{path}.pibake-tmp"
    with open(temp, "wb") as handle:
        handle.write(content)
    os.chown(temp, uid, gid)
    os.chmod(temp, mode)
    os.replace(temp, path)


def _restore_file(path: str, saved: Dict[str, object]) -> None:
    if os.path.lexists(path) and not os.path.isdir(path):
        os.unlink(path)
    if saved["kind"] == "symlink":
        os.symlink(str(saved["target"]), path)
    elif saved["kind"] == "file":
        _write_file(
            path, base64.b64decode(str(saved["content"])), int(saved["mode"]), int(saved["uid"]), int(saved["gid"])
        )


def _digest(path: str) -> Optional[str]:
    try:
        if os.path.islink(path):
            return "link:" + os.readlink(path)
        with open(path, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except OSError:
        return None


def processes_in_root(root: str) -> List[int]:
    """Processes whose root or working directory is ``root`` or below it (daemons or tasks left inside).

    The working directory counts too: a `chroot` command caught between chdir and chroot holds the mount busy
    although its root is still the host's.
    """
    real = os.path.realpath(root)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        for link in ("root", "cwd"):
            try:
                target = os.readlink(f"/proc/{name}/{link}")
            except OSError:
                continue
            if target == real or target.startswith(real + "/"):
                found.append(int(name))
                break
    return found


def kill_processes_in_root(root: str, grace: float = 3.0) -> List[int]:
    """SIGTERM then SIGKILL everything still running inside the chroot."""
    victims: List[int] = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        # Scan again each round: a process may have entered the root after the first look.
        current = processes_in_root(root)
        if not current:
            break
        for pid in current:
            if pid not in victims:
                victims.append(pid)
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + grace
        while time.time() < deadline and processes_in_root(root):
            time.sleep(0.1)
    return victims


# ---------------------------------------------------------------- attach


class Session:
    """One attached image or rootfs folder, backed by its lease record."""

    def __init__(self, record: Dict[str, object]):
        self.record = record

    @property
    def root(self) -> str:
        return str(self.record["root"])

    def _save(self) -> None:
        _lease.save(self.record)

    def _mount(self, source: str, target: str, how: str, options=()) -> None:
        """Record the mount, then make it."""
        os.makedirs(target, exist_ok=True)
        self.record["mounts"].append(target)  # type: ignore[union-attr]
        self._save()
        if how == "bind":
            _mounts.bind(source, target)
        else:
            _mounts.mount(source, target, fstype=how if how != "auto" else "", options=options)

    def _attach_loop(self, backing: str, offset: int, size: int) -> str:
        entry = {"backing": backing, "offset": offset, "size": size, "device": None}
        self.record["loops"].append(entry)  # type: ignore[union-attr]
        self._save()
        entry["device"] = _loop.attach(backing, offset, size)
        self._save()
        return str(entry["device"])

    def mount_system(self) -> None:
        for source, target, how in SYSTEM_MOUNTS:
            path = _inside(self.root, target)
            if how == "tmpfs":
                self._mount(source, path, "tmpfs", options=("mode=0755", "nosuid", "nodev"))
            else:
                self._mount(source, path, how)

    def install_guards(self, dns: bool) -> None:
        """policy-rc.d and the build's DNS; the originals are kept in the lease."""
        etc = _inside(self.root, "/etc")
        if not os.path.isdir(etc):
            raise PibakeError(f"{self.root} has no /etc; the image's root filesystem looks empty or broken.")
        policy = _inside(self.root, POLICY_RC_D)
        os.makedirs(os.path.dirname(policy), exist_ok=True)
        self.record["policy_rc_d"] = _snapshot_file(policy)
        self._save()
        _write_file(policy, POLICY_DENY_ALL, 0o755)
        if dns:
            resolv = _inside(self.root, RESOLV_CONF)
            self.record["resolv_conf"] = _snapshot_file(resolv)
            self._save()
            _write_file(resolv, _host_resolv_conf(), 0o644)
            self.record["resolv_conf_written"] = _digest(resolv)
        self._save()

    def check_arch(self, arch: str) -> None:
        shell = _inside(self.root, "/bin/sh")
        if not os.path.exists(shell):
            raise PibakeError("The image has no /bin/sh; it is not a usable Linux root filesystem.")
        found = _binfmt.elf_machine(os.path.realpath(shell))
        if arch not in ("", "native") and found != arch:
            raise PibakeError(f"The image's programs are built for {found or 'an unknown architecture'}, not {arch}; "
                              f"give an image built for {arch} or set pibake_arch.")


def _start(kind: str, persistent: bool, owner_pid: int, **fields) -> Session:
    owner = owner_pid or _lease.find_owner_pid()
    record = _lease.new_record(kind, owner, persistent, **fields)
    session = Session(record)
    session._save()
    return session


def attach_image(
    image: str,
    work_dir: str,
    grow_bytes: int = 0,
    arch: str = "aarch64",
    dns: bool = True,
    persistent: bool = False,
    owner_pid: int = 0,
    register_binfmt: bool = True,
    discard_dir: str = "",
    copy_from: str = "",
    min_free_bytes: int = 0,
) -> Session:
    """Attach and mount a Raspberry Pi disk image for customization.

    ``discard_dir`` (the build's working folder) is deleted when the session is reaped after its owner died.
    ``copy_from``: make ``image`` first as a sparse copy of this base image. The copy is made after the lease is
    written (fix: a build killed while copying used to leave the copy behind with no lease to find it by), and
    every check runs on the base image before anything is written.
    ``min_free_bytes``: refuse a root filesystem with less room than this after growing (too full to customize).
    """
    image = os.path.abspath(image)
    source = os.path.abspath(copy_from) if copy_from else image
    if not os.path.isfile(source):
        raise PibakeError(f"Image {source} does not exist; build or fetch the base image first.")
    if copy_from and os.path.lexists(image):
        raise PibakeError(f"{image} exists already; give the working copy a new path (or drop copy_from).")
    table = read_table(source)
    require_pi_layout(table, source)
    boot, rootp = table.get(1), table.get(2)
    if boot is None or rootp is None:  # require_pi_layout checked it; keeps type checkers honest
        raise PibakeError(f"{image} lacks a boot or root partition; give a Raspberry Pi OS-style image.")
    if _probe_fstype(source, rootp.offset) != "ext4":
        raise PibakeError(f"Partition 2 of {source} holds no ext4 filesystem; pibake customizes images with an ext4 root.")
    mode = _binfmt.ensure_binfmt(arch, register=register_binfmt)
    work_dir = os.path.abspath(work_dir)
    root = os.path.join(work_dir, "root")
    session = _start(
        "image", persistent, owner_pid, image=image, work_dir=work_dir, root=root, arch=arch, exec_mode=mode,
        boot_offset=boot.offset, boot_size=boot.length, boot_mode=None, boot_stage=None, fat=None,
        discard_dir=os.path.abspath(discard_dir) if discard_dir else "",
    )
    try:
        if copy_from:
            _copy_image(source, image)
        os.makedirs(work_dir, exist_ok=True)
        if grow_bytes > 0:
            table = grow_last_partition(image, grow_bytes, 2)
            rootp = table.get(2)
            if rootp is None:
                raise PibakeError(f"Growing {image} lost its root partition; start again from the base image.")
        root_dev = session._attach_loop(image, rootp.offset, rootp.length)
        if grow_bytes > 0:
            fsck = run(["e2fsck", "-f", "-p", root_dev], check=False)
            if fsck.returncode >= 4:
                raise PibakeError(f"The root filesystem of {image} has errors e2fsck cannot fix; use a clean base image.")
            run(["resize2fs", root_dev], what="Growing the root filesystem")
        session._mount(root_dev, root, "ext4")
        session.check_arch(arch)
        _check_room(root, image, min_free_bytes, grow_bytes)
        firmware = _inside(root, "/boot/firmware")
        if _fatstage.kernel_has_vfat():
            boot_dev = session._attach_loop(image, boot.offset, boot.length)
            session.record["boot_mode"] = "vfat"
            session._mount(boot_dev, firmware, "vfat")
        else:
            stage = os.path.join(work_dir, "boot-stage")
            shutil.rmtree(stage, ignore_errors=True)
            session.record.update(boot_mode="mtools", boot_stage=stage)
            session._save()
            session.record["fat"] = _fatstage.extract(image, boot.offset, stage)
            session._mount(stage, firmware, "bind")
        session.mount_system()
        session.install_guards(dns)
        session.record["state"] = "attached"
        session._save()
    except OSError as err:
        reap(_lease.path_of(session.record))
        if err.errno == errno.ENOSPC:  # fix: a full root used to end in a traceback (writing policy-rc.d)
            raise PibakeError(f"The root filesystem of {image} is full; raise pibake_grow (room added before "
                              f"customizing, now {grow_bytes >> 20} MiB) and build again.") from None
        raise
    except BaseException:
        reap(_lease.path_of(session.record))
        raise
    return session


def _check_room(root: str, image: str, min_free_bytes: int, grow_bytes: int) -> None:
    if min_free_bytes <= 0:
        return
    vfs = os.statvfs(root)
    free = vfs.f_bavail * vfs.f_frsize
    if free < min_free_bytes:
        raise PibakeError(
            f"The root filesystem of {image} has only {free >> 20} MiB free after growing by {grow_bytes >> 20} MiB, "
            f"less than the {min_free_bytes >> 20} MiB a customization needs; raise pibake_grow and build again."
        )


def _copy_image(source: str, image: str, where: str = "pibake_work_dir") -> None:
    os.makedirs(os.path.dirname(image), exist_ok=True)
    proc = run(["cp", "--sparse=always", "--reflink=auto", source, image], check=False)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()
        raise PibakeError(
            f"Copying {source} to {image} failed ({tail[-1] if tail else proc.returncode}); free space in "
            f"{os.path.dirname(os.path.dirname(image))} or point {where} elsewhere."
        )


def copy_attached(lease_path: str, dest: str) -> None:
    """Copy an attached image, as it would be after a detach, to ``dest`` (a snapshot), leaving it attached.

    Between roles nothing runs in the chroot: the build's guards (policy-rc.d, resolv.conf) are put back as detach
    would, the root filesystem is frozen (consistent on disk, clean journal) while the image file is copied
    sparse, then thawed and the guards reinstalled; the staged boot files are written into the copy's FAT with
    the detach's write-back.
    """
    with _lease.locked(lease_path):
        record = _lease.load(lease_path)
        if record is None or record.get("kind") != "image" or record.get("state") != "attached":
            raise PibakeError(f"No attached image session at {lease_path}; a snapshot is taken only while attached.")
        root = str(record["root"])
        live = {path: _snapshot_file(_inside(root, path)) for path in (POLICY_RC_D, RESOLV_CONF)}
        _restore_guards(record, root)
        try:
            os.sync()
            frozen = run(["fsfreeze", "--freeze", root], check=False).returncode == 0
            try:
                if not frozen:  # no freeze support: still consistent, the mount replays the journal on attach
                    run(["sync", "-f", root], check=False)
                _copy_image(str(record["image"]), dest, where="pibake_cache_dir")
            finally:
                if frozen:
                    run(["fsfreeze", "--unfreeze", root], check=False)
        finally:
            for path, saved in live.items():
                _restore_file(_inside(root, path), saved)
        if record.get("boot_mode") == "mtools" and record.get("boot_stage"):
            _fatstage.write_back(
                dest, int(record["boot_offset"]), int(record["boot_size"]), str(record["boot_stage"]),
                record["fat"],  # type: ignore[arg-type]
            )


def attach_dir(
    root_dir: str, arch: str = "native", dns: bool = True, persistent: bool = False, owner_pid: int = 0,
    register_binfmt: bool = True,
) -> Session:
    """Prepare a plain rootfs folder (e.g. a molecule instance) for the chroot connection."""
    root = os.path.abspath(root_dir)
    if not os.path.isdir(root):
        raise PibakeError(f"Root folder {root} does not exist; extract a root filesystem there first.")
    mode = _binfmt.ensure_binfmt(arch, register=register_binfmt)
    session = _start("dir", persistent, owner_pid, image=None, work_dir=root, root=root, arch=arch, exec_mode=mode)
    try:
        session.check_arch(arch)
        session.mount_system()
        session.install_guards(dns)
        session.record["state"] = "attached"
        session._save()
    except BaseException:
        reap(_lease.path_of(session.record))
        raise
    return session


# ---------------------------------------------------------------- detach and reap


def _restore_guards(record: Dict[str, object], root: str) -> None:
    """Put policy-rc.d and resolv.conf back, unless the customization itself replaced resolv.conf."""
    if not _mounts.is_mountpoint(root) and record.get("kind") == "image":
        return
    if record.get("policy_rc_d"):
        _restore_file(_inside(root, POLICY_RC_D), record["policy_rc_d"])  # type: ignore[arg-type]
    if record.get("resolv_conf"):
        resolv = _inside(root, RESOLV_CONF)
        if _digest(resolv) == record.get("resolv_conf_written"):
            _restore_file(resolv, record["resolv_conf"])  # type: ignore[arg-type]


def _unmount_recorded(record: Dict[str, object]) -> None:
    root = str(record.get("root") or "")

    def evict() -> None:
        # A mount still busy means something entered after the first sweep: sweep again before retrying.
        if root:
            kill_processes_in_root(root, grace=1.0)

    for mountpoint in reversed(list(record.get("mounts") or [])):
        if os.path.isdir(mountpoint):
            _mounts.unmount_below(mountpoint, on_busy=evict)


def _detach_recorded_loops(record: Dict[str, object]) -> None:
    for entry in reversed(list(record.get("loops") or [])):
        # Find by backing file and offset: also catches a loop attached just before a kill stopped the record.
        for device in _loop.loops_backed_by(str(entry["backing"]), int(entry["offset"])):
            _loop.detach(device)


def detach(lease_path: str, write_back: bool = True, trim: bool = True) -> Dict[str, object]:
    """Undo an attach cleanly, keeping the customization; returns a summary."""
    record = _lease.load(lease_path)
    if record is None:
        raise PibakeError(f"No session lease at {lease_path}; it was detached already or reaped by playbooks/clean.yml.")
    summary: Dict[str, object] = {"killed": [], "trimmed": False, "fat_rewritten": False}
    with _lease.locked(lease_path):
        root = str(record["root"])
        record["state"] = "detaching"
        _lease.save(record)
        summary["killed"] = kill_processes_in_root(root)
        _restore_guards(record, root)
        if trim and record.get("kind") == "image" and _mounts.is_mountpoint(root):
            # Discarding free blocks punches holes in the image file: deleted data never reaches the archive.
            summary["trimmed"] = run(["fstrim", root], check=False).returncode == 0
        _unmount_recorded(record)
        _detach_recorded_loops(record)
        if record.get("boot_mode") == "mtools" and record.get("boot_stage"):
            if write_back:
                summary["fat_rewritten"] = _fatstage.write_back(
                    str(record["image"]), int(record["boot_offset"]), int(record["boot_size"]),
                    str(record["boot_stage"]), record["fat"],  # type: ignore[arg-type]
                )
            shutil.rmtree(str(record["boot_stage"]), ignore_errors=True)
        _remove_mountpoint_dirs(record)
        if record.get("discard_dir"):
            # Fix: keep the lease while the working folder exists. Between this detach and the build's final
            # `state=reaped` (which deletes the folder and the lease) the outputs are still being written; a build
            # killed there used to leave its working folder, image included, with no lease to find it by. The
            # guard (still watching) or the next build reaps the lease and deletes the folder instead.
            record["state"] = "detached"
            _lease.save(record)
        else:
            _lease.remove(record)
    return summary


def _remove_mountpoint_dirs(record: Dict[str, object]) -> None:
    if record.get("kind") == "image":
        root = str(record["root"])
        if os.path.isdir(root) and not _mounts.is_mountpoint(root):
            try:
                os.rmdir(root)
            except OSError as err:  # never delete content: an unexpected file here is kept for inspection
                if err.errno not in (errno.ENOTEMPTY, errno.ENOENT):
                    raise


def reap(lease_path: str) -> bool:
    """Tear down a session whose owner is gone, writing nothing back. Returns False if it was gone already."""
    with _lease.locked(lease_path):
        record = _lease.load(lease_path)
        if record is None:
            return False
        root = str(record.get("root") or "")
        if root and _mounts.is_mountpoint(root):
            # A build killed while a snapshot was being taken leaves the root frozen; nothing unmounts then.
            run(["fsfreeze", "--unfreeze", root], check=False)
        if root:
            kill_processes_in_root(root)
            try:
                _restore_guards(record, root)
            except (OSError, PibakeError):
                pass  # the image is being thrown away; unmounting matters more
        _unmount_recorded(record)
        _detach_recorded_loops(record)
        if record.get("boot_stage"):
            shutil.rmtree(str(record["boot_stage"]), ignore_errors=True)
        _remove_mountpoint_dirs(record)
        discard = str(record.get("discard_dir") or "")
        if discard and os.path.isdir(discard) and not _mounts.mounts_below(discard):
            # The half-built working copy of a dead build is worth nothing; leaving it would fill the disk.
            shutil.rmtree(discard, ignore_errors=True)
        _lease.remove(record)
    return True


def reap_stale(include_persistent: bool = False) -> List[str]:
    """Reap every lease whose owner is dead (and persistent ones when asked). Returns the lease ids reaped."""
    reaped = []
    for path in _lease.all_leases():
        record = _lease.load(path)
        if record is None:
            continue
        stale = not _lease.owner_alive(record) or (include_persistent and record.get("persistent"))
        if stale and reap(path):
            reaped.append(str(record["id"]))
    return reaped
