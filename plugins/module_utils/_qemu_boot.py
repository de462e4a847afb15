# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Boot a built image in ``qemu-system-aarch64`` (software emulation) and reach it over SSH.

A *machine* is a working folder ``<work root>/pibake-boot-XXXX`` holding a sparse copy of the image (decompressed
from ``.xz``/``.zst``/``.gz`` when needed, optionally grown to exercise the first-boot expansion), the kernel and
initrd (the image's own, or the Debian test kernel: ``_qemu_kernel``), an optional blank data disk (``mkfs.ext4 -L
OURBOX_DATA`` on a file), a fresh ed25519 key whose public half is written into the admin user's
``authorized_keys`` inside the copy (debugfs, no mount), an ``ssh_config`` and one console log per boot.

``prepare`` makes the machine, ``Machine.boot`` starts qemu (``-M virt``, direct kernel boot, virtio disks and
network, user-mode networking forwarding a free ``127.0.0.1`` port to the guest's port 22, the serial console
into a file) and waits, with a deadline, for the login prompt and SSH; ``shutdown`` powers the guest off (it can
boot again: the second boot of the same disk); ``destroy`` ends qemu and deletes everything. The guard process
(``_qemu_guard``) launches qemu and deletes the machine when its owner dies, so nothing is left behind after a
failure, Ctrl-C or kill -9.

The source image and the cache are only ever read.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import socket
import subprocess
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _qemu_guard, _qemu_kernel
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._lease import find_owner_pid, process_start_time
from ansible_collections.pibake.image.plugins.module_utils._partitions import parse_size, read_table, require_pi_layout
from ansible_collections.pibake.image.plugins.module_utils._sparse import write_sparse
from ansible_collections.pibake.image.plugins.module_utils._run import require_tools, run

QEMU = "qemu-system-aarch64"
SSH_HOST_ALIAS = "pibake-vm"
LOGIN_RE = re.compile(r"(?m)^\S+ login: ")
PANIC_RE = re.compile(r"Kernel panic - not syncing[^\r\n]*|end Kernel panic[^\r\n]*")
EMERGENCY_RE = re.compile(r"(You are in emergency mode|Give root password for maintenance)[^\r\n]*")
DECOMPRESSORS = {".xz": ["xz", "-dc", "-T0"], ".zst": ["zstd", "-dcq", "--long=31"], ".gz": ["gzip", "-dc"]}
SUDOERS_ADMIN = "/etc/sudoers.d/010_pibake-admin"
HWSIM_FILES = {
    "/etc/modules-load.d/pibake-boot-test-wifi.conf": "# pibake boot test: a simulated Wi-Fi radio (wlan0)\nmac80211_hwsim\n",
    "/etc/modprobe.d/pibake-boot-test-wifi.conf": "options mac80211_hwsim radios=1\n",
}

# Under emulation udev coldplug is slow: on a loaded host the DATA drive's device unit appeared 66 s into boot,
# after the image's x-systemd.device-timeout (30 s) had failed its mount for good. A Pi enumerates its drive within
# seconds; the copy of a machine with a data disk gives every device job longer (sorts after the fstab generator's
# 50-device-timeout.conf, so it wins). With the drive absent the job still ends long before the boot flow does.
DEVICE_TIMEOUT_FILES = {
    "/etc/systemd/system/device.d/90-pibake-boot-test-timeout.conf":
        "# pibake boot test: emulated udev is slow; wait longer for drives (x-systemd.device-timeout)\n"
        "[Unit]\nJobRunningTimeoutSec=120s\n",
}


def _now() -> float:
    return time.time()


def _qemu_path(path: str) -> str:
    """A file name inside a qemu option string: commas are doubled."""
    return path.replace(",", ",,")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (qemu may still lose a race for it: boot() retries)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ preparing the disk


def sparse_copy_stream(stream, dest: str) -> int:
    """Write ``stream`` to ``dest`` leaving holes where whole 64 KiB blocks are zero; returns the size."""
    with open(dest, "wb") as out:
        return write_sparse(stream, out)


def copy_image(image: str, dest: str) -> str:
    """Copy (``.img``) or decompress (``.img.xz``, ``.img.zst``, ``.img.gz``) ``image`` to ``dest``, sparse."""
    if not os.path.isfile(image):
        raise PibakeError(f"Image {image} does not exist; give the path of a built image (deploy/<name>.img[.xz|.zst]).")
    suffix = os.path.splitext(image)[1]
    if suffix in DECOMPRESSORS:
        argv = DECOMPRESSORS[suffix] + [image]
        require_tools(argv[0], package_hint="install xz-utils, zstd and gzip (make deps)")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            sparse_copy_stream(proc.stdout, dest)
        finally:
            proc.stdout.close()
            err = proc.stderr.read().decode(errors="replace").strip()
            proc.stderr.close()
            proc.wait()
        if proc.returncode != 0:
            raise PibakeError(f"Decompressing {image} failed ({err.splitlines()[-1] if err else proc.returncode}); "
                              "the download may be truncated: fetch the image again.")
        return "decompressed " + suffix[1:]
    run(["cp", "--sparse=always", "--reflink=auto", image, dest], what=f"copying {image}")
    return "copied"


def _passwd(disk: str, offset: int) -> List[List[str]]:
    data = _ext4.read_file(disk, offset, "/etc/passwd")
    if data is None:
        raise PibakeError("The image's root filesystem has no /etc/passwd; is partition 2 the root filesystem?")
    return [line.split(":") for line in data.decode(errors="replace").splitlines() if line.count(":") >= 6]


def admin_user(disk: str, offset: int) -> str:
    """The admin user of an image: the one in the base role's sudo rule, else the first login user, else root."""
    rule = _ext4.read_file(disk, offset, SUDOERS_ADMIN)
    if rule:
        for line in rule.decode(errors="replace").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                return line.split()[0]
    for entry in _passwd(disk, offset):
        if 1000 <= int(entry[2] or 0) < 60000 and not entry[6].endswith(("nologin", "false")):
            return entry[0]
    return "root"


def _debugfs_script(disk: str, offset: int, commands: List[str]) -> None:
    with tempfile.NamedTemporaryFile("w", prefix="pibake-debugfs-", suffix=".cmd", delete=False) as handle:
        handle.write("\n".join(commands) + "\n")
        script = handle.name
    try:
        proc = run(["debugfs", "-w", "-f", script, _ext4.spec(disk, offset)], what="debugfs writing into the copy")
    finally:
        os.unlink(script)
    errors = [line for line in proc.stderr.decode(errors="replace").splitlines()
              if line.strip() and not line.startswith("debugfs ") and "Allocated inode" not in line]
    if errors:
        raise PibakeError(f"debugfs could not write into the image copy: {errors[-1]}")


def write_owned_file(disk: str, offset: int, path: str, data: bytes, uid: int, gid: int, mode: int,
                     dir_mode: int = 0o755) -> None:
    """Create or replace ``path`` in the ext4 filesystem, with owner and mode; missing parents get the same owner."""
    commands: List[str] = []
    current = ""
    for part in [p for p in os.path.dirname(path).split("/") if p]:
        current = f"{current}/{part}"
        if not _ext4.exists(disk, offset, current):
            commands += [f'mkdir "{current}"', f'set_inode_field "{current}" uid {uid}',
                         f'set_inode_field "{current}" gid {gid}', f'set_inode_field "{current}" mode 0{0o040000 | dir_mode:o}']
    if _ext4.exists(disk, offset, path):
        commands.append(f'rm "{path}"')
    with tempfile.NamedTemporaryFile("wb", prefix="pibake-inject-", delete=False) as handle:
        handle.write(data)
        source = handle.name
    try:
        commands += [f'write "{source}" "{path}"', f'set_inode_field "{path}" uid {uid}',
                     f'set_inode_field "{path}" gid {gid}', f'set_inode_field "{path}" mode 0{0o100000 | mode:o}']
        _debugfs_script(disk, offset, commands)
    finally:
        os.unlink(source)


def inject_ssh_key(disk: str, offset: int, user: str, public_key: str) -> Tuple[str, str]:
    """Make ``public_key`` the only authorized key of ``user`` (``auto``: the image's admin user) in the copy."""
    if user == "auto":
        user = admin_user(disk, offset)
    for entry in _passwd(disk, offset):
        if entry[0] == user:
            uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
            break
    else:
        raise PibakeError(f"The image has no user {user}; give ssh_user (the admin user the base role created).")
    if not _ext4.exists(disk, offset, home):
        raise PibakeError(f"The home folder {home} of {user} is missing in the image; give another ssh_user.")
    path = f"{home.rstrip('/')}/.ssh/authorized_keys"
    write_owned_file(disk, offset, path, public_key.strip().encode() + b"\n", uid, gid, 0o600, dir_mode=0o700)
    return user, path


def make_data_disk(path: str, size: int, label: str) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-E", "lazy_itable_init=1,lazy_journal_init=1", path],
        what=f"formatting the data disk {label}")


def build_cmdline(image_cmdline: str, append: str = "") -> str:
    """The image's cmdline.txt with its consoles replaced by QEMU's serial port, plus ``append``."""
    tokens = [tok for tok in image_cmdline.split() if not tok.startswith("console=")]
    if not any(tok.startswith("root=") for tok in tokens):
        raise PibakeError("The image's cmdline.txt has no root=; fix the image's boot partition.")
    return " ".join(tokens + ["console=ttyAMA0,115200"] + append.split())


# ------------------------------------------------------------------ the machine


class Machine:
    """A prepared test machine (see the module docstring); loaded again from its record by the module."""

    def __init__(self, record_path: str):
        record = _qemu_guard.read_json(record_path)
        if record is None:
            raise PibakeError(f"Test machine {record_path} does not exist (already destroyed, or its owner ended); "
                              "start a new one.")
        self.record_path = record_path
        self.record = record
        self.work = str(record["work_dir"])
        self.spec: Dict[str, object] = _qemu_guard.read_json(os.path.join(self.work, "machine.json")) or {}
        self.log: Callable[[str], None] = lambda message: None

    # -- files
    def path(self, name: str) -> str:
        return os.path.join(self.work, name)

    @property
    def status(self) -> Dict[str, object]:
        return _qemu_guard.read_json(self.path("status.json")) or {}

    @property
    def ssh_config(self) -> str:
        return self.path("ssh_config")

    @property
    def console_log(self) -> str:
        return self.path(f"console-{self.spec.get('boots', 0)}.log")

    def console_text(self) -> str:
        try:
            with open(self.console_log, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console_text().replace("\r", "").splitlines()[-lines:])

    def save_spec(self) -> None:
        _qemu_guard.write_json(self.path("machine.json"), self.spec)

    # -- talking to the guard
    def _request(self, action: str, wait_s: float, **fields) -> Dict[str, object]:
        current = _qemu_guard.read_json(self.path("request.json")) or {}
        seq = int(current.get("seq") or 0) + 1
        _qemu_guard.write_json(self.path("request.json"), {"seq": seq, "action": action, **fields})
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            status = self.status
            if int(status.get("seq") or 0) >= seq:
                return status
            if action == "destroy" and not os.path.exists(self.record_path):
                return {}
            if not _qemu_guard.alive(int(self.record.get("guard_pid") or 0), self.record.get("guard_start")):
                raise PibakeError(f"The guard of test machine {self.record['id']} is gone; run playbooks/clean.yml.")
            time.sleep(0.2)
        raise PibakeError(f"The guard of test machine {self.record['id']} did not answer '{action}' within "
                          f"{wait_s:.0f} s; see {self.path('guard.log')}.")

    # -- ssh
    def write_ssh_config(self, port: int) -> None:
        control = os.path.join(_qemu_guard.vm_dir(), f"{self.record['id']}-%C")
        lines = [
            f"Host {SSH_HOST_ALIAS} 127.0.0.1 localhost",
            "  HostName 127.0.0.1",
            f"  Port {port}",
            f"  User {self.spec['ssh_user']}",
            f"  IdentityFile {self.spec['ssh_key']}",
            "  IdentitiesOnly yes",
            "  StrictHostKeyChecking no",
            "  UserKnownHostsFile /dev/null",
            "  GlobalKnownHostsFile /dev/null",
            "  LogLevel ERROR",
            "  BatchMode yes",
            "  ConnectTimeout 10",
            "  ServerAliveInterval 5",
            "  ServerAliveCountMax 6",
            f"  ControlPath {control}",
        ]
        with open(self.ssh_config, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def ssh_argv(self, command: str) -> List[str]:
        return ["ssh", "-F", self.ssh_config, "-o", "ControlMaster=auto", "-o", "ControlPersist=30s",
                SSH_HOST_ALIAS, command]

    def ssh(self, command: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``command`` (a shell string) as the admin user on the guest."""
        try:
            proc = subprocess.run(self.ssh_argv(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise PibakeError(f"`{command}` on the test machine took longer than {timeout:.0f} s.") from None
        if check and proc.returncode != 0:
            raise PibakeError(f"`{command}` on the test machine failed ({proc.returncode}): "
                              f"{(proc.stderr or proc.stdout).decode(errors='replace').strip()[-300:]}")
        return proc

    def _banner(self, port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.settimeout(3)
                return sock.recv(64).startswith(b"SSH-")
        except OSError:
            return False

    # -- lifecycle
    def seconds(self) -> float:
        """Seconds since qemu was launched for the current boot."""
        return round(_now() - float(self.status.get("launched_at") or _now()), 1)

    def boot(self, wait: str = "ssh", timeout: float = 600, launch_attempts: int = 3) -> Dict[str, object]:
        """Start qemu and wait (``ssh``, ``login`` or ``none``); returns the boot's figures."""
        if wait not in ("ssh", "login", "none"):
            raise PibakeError(f"wait must be ssh, login or none, not {wait!r}.")
        if self.status.get("running"):
            raise PibakeError(f"Test machine {self.record['id']} is already running; stop it first.")
        self.spec["boots"] = int(self.spec.get("boots", 0)) + 1
        for attempt in range(1, launch_attempts + 1):
            port = free_port()
            self.spec["ssh_port"] = port
            self.save_spec()
            self.write_ssh_config(port)
            log_before = len(self._qemu_log(whole=True))
            status = self._request("launch", 30, argv=self.qemu_argv(port))
            if status.get("error"):
                raise PibakeError(f"qemu did not start: {status['error']}.")
            time.sleep(1.0)
            status = self.status
            if status.get("running") or "host forwarding" not in self._qemu_log(whole=True)[log_before:]:
                break
            self.log(f"port {port} was taken before qemu bound it; retrying ({attempt}/{launch_attempts})")
        return self._wait_boot(wait, timeout)

    def _qemu_log(self, whole: bool = False) -> str:
        try:
            with open(self.path("qemu.log"), encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except FileNotFoundError:
            return ""
        return text if whole else text[-4000:]

    def _wait_boot(self, wait: str, timeout: float) -> Dict[str, object]:
        figures: Dict[str, object] = {"boot": self.spec["boots"], "ssh_port": self.spec["ssh_port"],
                                      "login_prompt_s": None, "ssh_s": None}
        if wait == "none":
            return figures
        deadline = time.monotonic() + timeout
        last_probe = 0.0
        while True:
            status = self.status
            text = self.console_text()
            if figures["login_prompt_s"] is None and LOGIN_RE.search(text):
                figures["login_prompt_s"] = self.seconds()
                self.log(f"login prompt after {figures['login_prompt_s']} s")
            for pattern in (PANIC_RE, EMERGENCY_RE):
                found = pattern.search(text)
                if found:
                    raise PibakeError(f"The guest failed to boot: {found.group(0).strip()}; console log tail:\n"
                                      f"{self.console_tail()}")
            if not status.get("running"):
                raise PibakeError(f"qemu exited ({status.get('exit_code')}) {self.seconds()} s into boot "
                                  f"{self.spec['boots']}: {self._qemu_log().strip()[-500:]}\nconsole log tail:\n"
                                  f"{self.console_tail()}")
            if wait == "login" and figures["login_prompt_s"] is not None:
                return figures
            if wait == "ssh" and time.monotonic() - last_probe >= 2:
                last_probe = time.monotonic()
                if self._banner(int(self.spec["ssh_port"])):
                    probe = self.ssh("true", timeout=60, check=False)
                    if probe.returncode == 0:
                        figures["ssh_s"] = self.seconds()
                        self.log(f"SSH answers after {figures['ssh_s']} s")
                        return figures
                    figures["ssh_error"] = probe.stderr.decode(errors="replace").strip()[-300:]
            if time.monotonic() > deadline:
                what = "a login prompt" if wait == "login" else "SSH with the injected key"
                detail = f" (last SSH error: {figures['ssh_error']})" if figures.get("ssh_error") else ""
                raise PibakeError(f"The guest did not offer {what} within {timeout:.0f} s{detail}; console log "
                                  f"tail:\n{self.console_tail()}")
            time.sleep(1)

    def wait_until(self, command: str, timeout: float, interval: float = 3) -> float:
        """Poll ``command`` over SSH until it succeeds; returns seconds since launch, raises after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            proc = self.ssh(command, timeout=max(30.0, interval * 4), check=False)
            if proc.returncode == 0:
                return self.seconds()
            if not self.status.get("running"):
                raise PibakeError(f"qemu exited while waiting for `{command}`; console log tail:\n{self.console_tail()}")
            if time.monotonic() > deadline:
                raise PibakeError(f"`{command}` did not succeed on the guest within {timeout:.0f} s (last output: "
                                  f"{(proc.stdout + proc.stderr).decode(errors='replace').strip()[-300:]}).")
            time.sleep(interval)

    def shutdown(self, timeout: float = 120) -> Dict[str, object]:
        """Power the guest off (``systemctl poweroff`` over SSH, then the power button), keeping its disks."""
        if not self.status.get("running"):
            return {"stopped": False}
        started = time.monotonic()
        with contextlib.suppress(PibakeError):
            self.ssh("sudo -n systemctl --no-block poweroff || systemctl --no-block poweroff", timeout=20, check=False)
        status = self._request("stop", timeout + 15, timeout=timeout)
        return {"stopped": True, "seconds": round(time.monotonic() - started, 1),
                "forced": bool(status.get("forced_stop")), "exit_code": status.get("exit_code")}

    def destroy(self, timeout: float = 30) -> None:
        """End qemu at once and delete the machine's files (the guard does it; without a guard, this process)."""
        if os.path.exists(self.record_path) and _qemu_guard.alive(int(self.record.get("guard_pid") or 0),
                                                                  self.record.get("guard_start")):
            with contextlib.suppress(PibakeError):
                self._request("destroy", timeout, timeout=0)
            deadline = time.monotonic() + timeout
            while os.path.exists(self.record_path) and time.monotonic() < deadline:
                time.sleep(0.2)
        if os.path.exists(self.record_path) or os.path.isdir(self.work):
            _qemu_guard.reap(self.record_path)
            _qemu_guard.remove_machine_files(self.record)

    # -- qemu
    def qemu_argv(self, port: int) -> List[str]:
        spec = self.spec
        argv = [str(spec["qemu"]), "-M", str(spec["machine"]), "-cpu", str(spec["cpu"]), "-smp", str(spec["smp"]),
                "-m", str(spec["memory"]), "-nographic", "-no-reboot",
                "-kernel", str(spec["kernel"])]
        if spec.get("initrd"):
            argv += ["-initrd", str(spec["initrd"])]
        argv += ["-append", str(spec["cmdline"]),
                 "-drive", f"if=none,id=system,file={_qemu_path(str(spec['disk']))},format=raw,discard=unmap",
                 "-device", "virtio-blk-pci,drive=system"]
        if spec.get("data_disk"):
            argv += ["-drive", f"if=none,id=data,file={_qemu_path(str(spec['data_disk']))},format=raw,discard=unmap",
                     "-device", "virtio-blk-pci,drive=data"]
        netdev = f"user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:22" + (",restrict=on" if spec.get("restrict_network") else "")
        argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=net0,romfile=",
                 "-device", "virtio-rng-pci",
                 "-serial", f"file:{_qemu_path(self.console_log)}", "-monitor", "none",
                 "-qmp", f"unix:{_qemu_path(self.path('qmp.sock'))},server=on,wait=off"]
        return argv

    def attach_data_disk(self, attached: bool) -> None:
        """Attach (or not) the data disk at the next boot; it is made on first use."""
        if attached and not self.spec.get("data_disk_file"):
            raise PibakeError("This test machine was prepared without a data disk; prepare it with data_disk.")
        self.spec["data_disk"] = self.spec.get("data_disk_file", "") if attached else ""
        self.save_spec()

    def describe(self) -> Dict[str, object]:
        spec = self.spec
        return {
            "vm": self.record_path,
            "id": self.record["id"],
            "work_dir": self.work,
            "ssh_host": "127.0.0.1",
            "ssh_port": spec.get("ssh_port"),
            "ssh_user": spec.get("ssh_user"),
            "ssh_private_key": spec.get("ssh_key"),
            "ssh_config": self.ssh_config,
            "ssh_host_alias": SSH_HOST_ALIAS,
            "console_log": self.console_log,
            "kernel_source": spec.get("kernel_source"),
            "kernel": spec.get("kernel_description"),
            "cmdline": spec.get("cmdline"),
            "disk_bytes": spec.get("disk_bytes"),
            "image_bytes": spec.get("image_bytes"),
            "data_disk": bool(spec.get("data_disk")),
            "boots": spec.get("boots", 0),
            "running": bool(self.status.get("running")),
        }


def prepare(
    image: str,
    *,
    work_root: str = "",
    owner_pid: int = 0,
    grow: str = "0",
    data_disk: bool = False,
    data_disk_size: str = "256M",
    data_disk_label: str = "OURBOX_DATA",
    ssh_user: str = "auto",
    ssh_public_key: str = "",
    kernel: str = "auto",
    kernel_release: str = "trixie",
    append: str = "",
    memory: int = 2048,
    smp: int = 2,
    cpu: str = "cortex-a72",
    machine: str = "virt",
    simulate_wifi: bool = False,
    files: Optional[Dict[str, str]] = None,
    restrict_network: bool = False,
    cache_dir: Optional[str] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Machine:
    """Make a test machine from ``image`` (never modified); see the module docstring."""
    log = log or (lambda message: None)
    require_tools(QEMU, "debugfs", "mtype", "mcopy", "mkfs.ext4", "ssh", "ssh-keygen", "sfdisk",
                  package_hint="install qemu-system-arm, e2fsprogs, mtools, fdisk and openssh-client (make deps)")
    image = os.path.abspath(image)
    if not os.path.isfile(image):
        raise PibakeError(f"Image {image} does not exist; give the path of a built image (deploy/<name>.img[.xz|.zst]).")
    work_root = os.path.abspath(work_root or tempfile.gettempdir())
    os.makedirs(work_root, exist_ok=True)
    owner_pid = owner_pid or find_owner_pid()
    _qemu_guard.reap_stale()
    work = tempfile.mkdtemp(prefix=_qemu_guard.WORK_PREFIX, dir=work_root)
    record = _qemu_guard.new_record(owner_pid, work)
    path = _qemu_guard.save_record(record)  # intent first: a killed run can always be found again
    guard_pid = _qemu_guard.start_guard(path)
    record.update(guard_pid=guard_pid, guard_start=process_start_time(guard_pid) if guard_pid else None)
    _qemu_guard.write_json(path, record)
    vm = Machine(path)
    vm.log = log
    try:
        _fill(vm, image, grow=grow, data_disk=data_disk, data_disk_size=data_disk_size,
              data_disk_label=data_disk_label, ssh_user=ssh_user, ssh_public_key=ssh_public_key, kernel=kernel,
              kernel_release=kernel_release, append=append, memory=memory, smp=smp, cpu=cpu, machine=machine,
              simulate_wifi=simulate_wifi, files=files or {}, restrict_network=restrict_network,
              cache_dir=cache_dir, log=log)
    except BaseException:
        vm.destroy()
        raise
    record.update(prep_pid=0, prep_start=None)  # prepared: the guard must not kill this process any more
    _qemu_guard.write_json(path, record)
    vm.record = record
    return vm


def _fill(vm: Machine, image: str, *, grow, data_disk, data_disk_size, data_disk_label, ssh_user, ssh_public_key,
          kernel, kernel_release, append, memory, smp, cpu, machine, simulate_wifi, files, restrict_network,
          cache_dir, log) -> None:
    disk = vm.path("system.img")
    started = time.monotonic()
    how = copy_image(image, disk)
    image_bytes = os.path.getsize(disk)
    log(f"{how} {os.path.basename(image)} into {vm.work} ({image_bytes >> 20} MiB) in "
        f"{time.monotonic() - started:.1f} s")
    table = read_table(disk)
    require_pi_layout(table, image)
    boot, root = table.get(1), table.get(2)
    grow_bytes = parse_size(grow)
    if grow_bytes > 0:
        with open(disk, "r+b") as handle:  # a bigger disk, as when flashing onto a bigger card or NVMe
            handle.truncate(((image_bytes + grow_bytes + (1 << 20) - 1) >> 20) << 20)
    files_dir = vm.path("boot")
    chosen = _qemu_kernel.boot_files(disk, boot.offset, root.offset, files_dir, kernel=kernel,
                                     release=kernel_release, cache_dir=cache_dir, log=log)
    log(f"kernel: {chosen.description}")
    key = vm.path("id_ed25519")
    if ssh_public_key:
        public = ssh_public_key
        key = ""
    else:
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"pibake-boot-test-{vm.record['id']}", "-f", key],
            what="generating the test SSH key")
        with open(key + ".pub", encoding="utf-8") as handle:
            public = handle.read()
    if ssh_user == "none":
        user = ""
    else:
        user, keys_path = inject_ssh_key(disk, root.offset, ssh_user, public)
        log(f"authorized the test key for {user} ({keys_path})")
    extra = dict(HWSIM_FILES) if simulate_wifi else {}
    if data_disk:
        extra.update(DEVICE_TIMEOUT_FILES)
    extra.update(files)
    for inner, content in sorted(extra.items()):
        _ext4.write_file(disk, root.offset, inner, content.encode())
    data_file = ""
    if data_disk:
        data_file = vm.path("data.img")
        make_data_disk(data_file, parse_size(data_disk_size), data_disk_label)
    vm.spec.update(
        image=image, disk=disk, disk_bytes=os.path.getsize(disk), image_bytes=image_bytes,
        data_disk=data_file, data_disk_file=data_file, data_disk_label=data_disk_label if data_disk else "",
        kernel=chosen.kernel, initrd=chosen.initrd, kernel_source=chosen.source,
        kernel_description=chosen.description, image_cmdline=chosen.cmdline,
        cmdline=build_cmdline(chosen.cmdline, append), ssh_user=user, ssh_key=key, memory=int(memory),
        smp=int(smp), cpu=cpu, machine=machine, qemu=QEMU, restrict_network=bool(restrict_network),
        injected_files=sorted(extra), boots=0,
    )
    vm.save_spec()


def load(record_path: str, log: Optional[Callable[[str], None]] = None) -> Machine:
    vm = Machine(record_path)
    if log:
        vm.log = log
    return vm


def reap_stale() -> List[str]:
    return _qemu_guard.reap_stale()


def shell_quote(command: List[str]) -> str:
    return " ".join(shlex.quote(part) for part in command)
