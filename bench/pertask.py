# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Per-task overhead of trivial tasks in an image root, with and without the persistent interpreter.

Used by ``bench/customize-pertask`` (and meant for issue 9's ``bench/customize``): ``measure(root)`` runs one
playbook against the root through ``pibake.image.chroot`` in which every trivial task (``command``, ``copy``,
``template``, ``lineinfile``) appears once with the persistent interpreter and once without, side by side in each
round (the order alternating between rounds), so both modes see the same machine load. Task wall times come from
the ``pibake_pertask`` callback in ``bench/callback_plugins``. The first task of each mode is a warm-up, reported
separately: for the persistent interpreter it includes starting the server and importing Ansible's module_utils.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = ("command", "copy", "template", "lineinfile")
MODES = ("persistent", "plain")
TARGET = 0.15  # issue 9: median time of each trivial task in the arm64 chroot


def base_image() -> str:
    """The newest cached Debian arm64 base image (pibake.image.base_image, source debian)."""
    cache = os.environ.get("PIBAKE_CACHE_DIR") or os.path.expanduser("~/.cache/pibake")
    found = sorted(glob.glob(os.path.join(cache, "base", "debian-trixie-arm64-*.img")), key=os.path.getmtime)
    if not found:
        sys.exit("No cached Debian arm64 base image; build one (pibake.image.base_image, source debian) "
                 "or give --image.")
    return found[-1]


@contextlib.contextmanager
def attached_copy(image: str, workdir: str, grow_bytes: int) -> Iterator[str]:
    """Attach a sparse copy of ``image`` in a new folder below ``workdir``; yields its root, then detaches and
    deletes the copy."""
    from ansible_collections.pibake.image.plugins.module_utils import _lease, _mounts, _session

    work = tempfile.mkdtemp(prefix="pibake-bench-", dir=workdir)
    session = None
    try:
        session = _session.attach_image(os.path.join(work, "bench.img"), work, owner_pid=os.getpid(),
                                        copy_from=image, grow_bytes=grow_bytes)
        yield session.root
    finally:
        if session is not None:
            _session.detach(_lease.path_of(session.record), write_back=False, trim=False)
        if not _mounts.mounts_below(work):  # never recurse into a mount (the image's /dev is the host's)
            shutil.rmtree(work, ignore_errors=True)


def _task(kind: str, mode: str, label: str, value: str) -> dict:
    if kind == "command":
        task: dict = {"ansible.builtin.command": {"cmd": "true"}, "changed_when": False}
    elif kind == "copy":
        task = {"ansible.builtin.copy": {"content": f"{value}\n", "dest": "/tmp/pibake-pertask-copy", "mode": "0644"}}
    elif kind == "template":
        task = {"ansible.builtin.template": {"src": "pertask.j2", "dest": "/tmp/pibake-pertask-template",
                                             "mode": "0644"}, "vars": {"pertask_value": value}}
    else:
        task = {"ansible.builtin.lineinfile": {"path": "/tmp/pibake-pertask-lines", "line": value, "create": True,
                                               "mode": "0644"}}
    task = {"name": label, **task}
    task.setdefault("vars", {})["pibake_chroot_persistent"] = mode == "persistent"
    return task


def playbook(rounds: int) -> List[dict]:
    tasks = [_task("command", mode, f"warm-up {mode}", "") for mode in MODES]
    for number in range(rounds):
        for kind in KINDS:
            order = MODES if number % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                tasks.append(_task(kind, mode, f"{kind} {mode} {number}", f"{kind} {mode} {number}"))
    tasks.append({
        "name": "Remove the bench files",
        "ansible.builtin.file": {"path": "{{ item }}", "state": "absent"},
        "loop": ["/tmp/pibake-pertask-copy", "/tmp/pibake-pertask-template", "/tmp/pibake-pertask-lines"],
    })
    return [{"name": "Per-task overhead", "hosts": "bench", "gather_facts": False, "tasks": tasks}]


def measure(root: str, rounds: int = 5, interpreter: str = "/usr/bin/python3") -> Dict[str, object]:
    """Run the bench playbook against ``root``; returns per-kind medians, warm-up times and the raw samples."""
    with tempfile.TemporaryDirectory(prefix="pibake-pertask-") as tmp:
        with open(os.path.join(tmp, "pertask.j2"), "w", encoding="utf-8") as handle:
            handle.write("{{ pertask_value }}\n")
        book = os.path.join(tmp, "pertask.yml")
        with open(book, "w", encoding="utf-8") as handle:
            json.dump(playbook(rounds), handle, indent=1)  # JSON is YAML
        inventory = os.path.join(tmp, "inventory.yml")
        with open(inventory, "w", encoding="utf-8") as handle:
            json.dump({"all": {"hosts": {"bench": {
                "ansible_connection": "pibake.image.chroot", "pibake_chroot_root": root,
                "ansible_python_interpreter": interpreter,
            }}}}, handle)
        out = os.path.join(tmp, "times.jsonl")
        env = dict(os.environ, ANSIBLE_CALLBACK_PLUGINS=os.path.join(REPO, "bench", "callback_plugins"),
                   ANSIBLE_CALLBACKS_ENABLED="pibake_pertask", PIBAKE_PERTASK_OUT=out)
        start = time.monotonic()
        proc = subprocess.run([os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "-i", inventory, book],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.monotonic() - start
        if proc.returncode != 0:
            raise RuntimeError(f"the bench playbook failed:\n{proc.stdout[-3000:]}")
        with open(out, encoding="utf-8") as handle:
            samples = [json.loads(line) for line in handle]
    times: Dict[str, Dict[str, List[float]]] = {kind: {mode: [] for mode in MODES} for kind in KINDS}
    warmup: Dict[str, float] = {}
    for sample in samples:
        words = sample["task"].split()
        if words[0] == "warm-up":
            warmup[words[1]] = sample["seconds"]
        elif words[0] in times and len(words) == 3:
            times[words[0]][words[1]].append(sample["seconds"])
    medians = {kind: {mode: statistics.median(values) for mode, values in modes.items() if values}
               for kind, modes in times.items()}
    return {"root": root, "rounds": rounds, "playbook_seconds": round(wall, 1), "warmup": warmup,
            "medians": medians, "samples": times}


def report(result: Dict[str, object]) -> str:
    medians = result["medians"]
    warmup = result["warmup"]
    lines = [
        f"per-task wall time, median of {result['rounds']} (one playbook, modes interleaved; "
        f"playbook {result['playbook_seconds']} s)",
        f"{'task':<12}{'persistent s':>14}{'plain s':>10}{'plain/persistent':>18}{'<= ' + str(TARGET) + ' s':>10}",
    ]
    for kind in KINDS:
        fast, slow = medians[kind].get("persistent"), medians[kind].get("plain")  # type: ignore[index]
        ratio = f"{slow / fast:.1f}x" if fast and slow else "-"
        verdict = "yes" if fast is not None and fast <= TARGET else "no"
        lines.append(f"{kind:<12}{fast:>14.3f}{slow:>10.3f}{ratio:>18}{verdict:>10}")
    lines.append(f"first task (warm-up): persistent {warmup.get('persistent', float('nan')):.2f} s incl. server "
                 f"start and module_utils import, plain {warmup.get('plain', float('nan')):.2f} s")
    return "\n".join(lines)
