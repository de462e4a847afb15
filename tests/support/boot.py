# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Helpers for the QEMU boot tests: test machines owned by the test process, testinfra over SSH, boot figures.

    vm = boot.machine(image, grow="512M")            # prepared; owner = this pytest process
    figures = vm.boot(timeout=boot.BOOT_TIMEOUT)      # login prompt and SSH
    host = boot.testinfra_host(vm)                    # testinfra, ssh backend, sudo
    boot.FIGURES.add("ourbox-mini first boot", login_prompt_s=..., ssh_s=...)

Every machine lives below ``tests/output/boot/work`` and is deleted by its guard if the test process dies.
"""

from __future__ import annotations

import os
import subprocess
import time
from typing import Dict, List, Optional

import testinfra

from ansible_collections.pibake.image.plugins.module_utils import _ext4, _qemu_boot
from ansible_collections.pibake.image.plugins.module_utils._partitions import read_table

from . import e2e, mini_image

OUTPUT = os.path.join(e2e.REPO, "tests", "output", "boot")
WORK_ROOT = os.path.join(OUTPUT, "work")
FIGURES_LOG = os.path.join(OUTPUT, "boot-times.log")
BOOT_TIMEOUT = int(os.environ.get("PIBAKE_BOOT_TIMEOUT", "600"))
MINI_INIT = b"""#!/bin/sh
# pibake boot test: the mini image's init prints a login prompt and waits.
/bin/mount -t proc proc /proc
echo "pibake-mini: init running on kernel $(/bin/uname -r)"
/bin/cat /proc/partitions
echo -n "pibake-mini login: "
exec /bin/sleep 100000
"""


def machine(image: str, **options) -> _qemu_boot.Machine:
    """A test machine from ``image`` owned by this process (the guard deletes it if the process dies)."""
    os.makedirs(WORK_ROOT, exist_ok=True)
    log_lines: List[str] = []
    vm = _qemu_boot.prepare(image, work_root=WORK_ROOT, owner_pid=os.getpid(), log=log_lines.append, **options)
    vm.log = log_lines.append
    vm.progress = log_lines  # type: ignore[attr-defined]
    return vm


def testinfra_host(vm: _qemu_boot.Machine):
    """testinfra over SSH as the admin user, commands through sudo (the ssh backend reuses one connection)."""
    return testinfra.get_host(f"ssh://{_qemu_boot.SSH_HOST_ALIAS}", ssh_config=vm.ssh_config, sudo=True,
                              timeout=30)


def mini_boot_image(dest: str) -> str:
    """The tiny busybox test image with an init and a root user: boots in seconds with the Debian test kernel."""
    mini_image.cached(dest)
    root = read_table(dest).get(2)
    _ext4.write_file(dest, root.offset, "/sbin/init", MINI_INIT, mode=0o755)
    _ext4.write_file(dest, root.offset, "/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n")
    _ext4.make_dirs(dest, root.offset, "/root")
    return dest


def processes_using(path: str) -> List[str]:
    """Command lines of live (not zombie) processes that mention ``path``."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if state != "Z" and path in cmdline:
            found.append(f"{pid} {cmdline[:300]}")
    return found


class Figures:
    """Boot-time figures, appended to tests/output/boot/boot-times.log and printed at the end of the run."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, what: str, **values: Optional[float]) -> None:
        text = ", ".join(f"{key} {value}" for key, value in values.items())
        line = f"{time.strftime('%F %T')} {what}: {text}"
        self.lines.append(line)
        os.makedirs(OUTPUT, exist_ok=True)
        with open(FIGURES_LOG, "a", encoding="utf-8") as handle:
            handle.write(line + "\n")


FIGURES = Figures()


def unit_seconds(host, unit: str, prop: str = "ActiveEnterTimestampMonotonic") -> Optional[float]:
    """When ``unit`` reached a state, in seconds after the kernel started (systemd's monotonic clock)."""
    out = host.check_output(f"systemctl show -p {prop} --value {unit}")
    return round(int(out or 0) / 1e6, 1) if out and out != "0" else None


def run_playbook(playbook: str, *args: str, timeout: float = 1800, env: Optional[Dict[str, str]] = None):
    """``ansible-playbook`` from the repository root; returns the CompletedProcess (stdout and stderr merged)."""
    full_env = dict(os.environ)
    full_env.pop("PIBAKE_BUILD_LOG", None)
    full_env.update(env or {})
    return subprocess.run([os.path.join(e2e.REPO, ".venv", "bin", "ansible-playbook"), playbook, *args],
                          cwd=e2e.REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=timeout, check=False)
