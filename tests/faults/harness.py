# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The fault suite's pipeline: build -> finalize -> publish -> flash, each stage a real ``ansible-playbook`` run.

A stage runs with its own ``PIBAKE_BUILD_LOG``; a watcher follows that log (the ``pibake.image.build_log``
callback writes a line when each play and task starts and when each result arrives) and the mount table, so a
kill can be aimed at a phase: "when the phase starts, wait a random part of its calibrated length, then send the
signal". After the kill the watcher's last events say where it really landed.

Everything a stage touches lives below one temporary folder (work, deploy, cache, leases, Ansible's local temp),
and every process it starts carries ``PIBAKE_FAULT_RUN=<marker>`` in its environment, so the leak checks see this
suite's loops, mounts and processes and nobody else's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from typing import Callable, Dict, List, Optional, Tuple

from tests.support import leaks, mini_image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOK_BIN = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
TEST_ROLES = os.path.join(REPO, "tests", "integration", "roles")
NAME = "cubeos-faults-dev"  # pibake_image_name of the builds: profile cubeos, version faults, variant dev
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (.*)$")
RESULT = re.compile(r"^(ok|changed|FAILED|failed \(ignored\)|skipping|UNREACHABLE): \[")


# ------------------------------------------------------------------------------------------------ phases

@dataclasses.dataclass(frozen=True)
class Phase:
    """A stretch of the pipeline, from the event that starts it to the event that starts whatever follows.

    Events are regular expressions on build.log lines (``TASK [...]``, ``PLAY [...]``) or ``@mounted`` (the
    build's root filesystem appears in the mount table) and ``@end`` (the playbook exits).
    """

    name: str
    start: str
    end: str
    cold_cache: bool = False  # the base image must not be cached, so that the download really happens
    hot: str = ""  # an event inside the phase where a kill hurts most; "hot" kills wait for it, then fire at once


PHASES = (
    Phase("download", r"TASK \[.*Resolve the base image\]", r"TASK \[.*Create the folder of working copies\]",
          cold_cache=True),
    Phase("grow", r"TASK \[.*Copy the base image into the working folder", "@mounted"),
    Phase("attach", "@mounted", r"PLAY \[Customize"),
    Phase("customize", r"PLAY \[Customize", r"PLAY \[Finalize"),
    Phase("detach", r"PLAY \[Finalize", r"TASK \[.*(Shrink the root filesystem|Discard free space) || @end"),
    # Hot: while resize2fs holds its offset loop device on the image.
    Phase("shrink", r"TASK \[.*Shrink the root filesystem", r"TASK \[.*(Write the SBOM|Compress the image)",
          hot="@loop"),
    Phase("compress", r"TASK \[.*(Write the SBOM|Compress the image)", "@end"),
    Phase("publish", r"TASK \[Push the deploy folder", "@end"),
    Phase("flash", r"TASK \[Write the image to the disk", "@end"),
)
PHASE_BY_NAME = {phase.name: phase for phase in PHASES}


def phase_of(events: List[Tuple[float, str]]) -> str:
    """The phase the last of ``events`` falls in (the latest phase whose start event happened), or ''."""
    landed = ""
    for _when, text in events:
        for phase in PHASES:
            if _matches(phase.start, text):
                landed = phase.name
    return landed


def _matches(pattern: str, text: str) -> bool:
    """``pattern``: alternatives joined by `` || ``, each a regex on log lines or an event (``@mounted``, ``@end``)."""
    alternatives = pattern.split(" || ")
    if text.startswith("@"):
        return text in alternatives
    return any(not alt.startswith("@") and re.search(alt, text) for alt in alternatives)


# ------------------------------------------------------------------------------------------------ runs

@dataclasses.dataclass
class Kill:
    phase: str
    fraction: float  # how far into the phase (its calibrated length) the signal goes out
    sig: int
    group: bool  # to the whole process group (as Ctrl-C in a terminal, or a CI job cancel) or to the pid only
    hot: bool = False  # wait for the phase's hot event (see Phase.hot) and fire at once


@dataclasses.dataclass
class Run:
    stage: str
    index: int
    argv: List[str]
    log: str
    out: str
    started: float
    returncode: Optional[int] = None
    events: List[Tuple[float, str]] = dataclasses.field(default_factory=list)
    completed: List[str] = dataclasses.field(default_factory=list)  # task names with a result line
    failed_tasks: List[str] = dataclasses.field(default_factory=list)
    killed_at: Optional[float] = None
    kill: Optional[Kill] = None
    landed: str = ""
    last_task: str = ""
    guards_at_kill: List[str] = dataclasses.field(default_factory=list)
    sid: int = 0

    def seconds(self) -> float:
        return (self.events[-1][0] if self.events else time.monotonic()) - self.started

    def output(self) -> str:
        try:
            with open(self.out, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except OSError:
            return ""

    def event_time(self, pattern: str) -> Optional[float]:
        for when, text in self.events:
            if _matches(pattern, text):
                return when - self.started
        return None


class Watcher:
    """Follow a run's build.log and the mount table; turn both into timestamped events."""

    def __init__(self, run: Run, mount_marker: str, loop_folder: str = "", skip_loops=()):
        self.run = run
        self.mount_marker = mount_marker
        self.loop_folder = loop_folder
        self.skip_loops = set(skip_loops)
        self._loops = False
        self._offset = 0
        self._pending = ""
        self._task = ""
        self._mounted = False

    def poll(self) -> None:
        now = time.monotonic()
        try:
            with open(self.run.log, encoding="utf-8", errors="replace") as handle:
                handle.seek(self._offset)
                data = handle.read()
                self._offset = handle.tell()
        except OSError:
            data = ""
        text = self._pending + data
        lines = text.split("\n")
        self._pending = lines.pop()
        for line in lines:
            match = LINE.match(line)
            if not match:
                continue
            body = match.group(1)
            if body.startswith(("TASK [", "PLAY [")):
                self.run.events.append((now, body))
                if body.startswith("TASK ["):
                    self._task = body[6:-1] if body.endswith("]") else body[6:]
                    self.run.last_task = self._task
            elif RESULT.match(body) and self._task:
                if body.startswith("FAILED"):
                    self.run.failed_tasks.append(self._task)
                elif not body.startswith("skipping"):
                    self.run.completed.append(self._task)
        if not self._mounted and self.mount_marker:
            if self._root_mounted():
                self._mounted = True
                self.run.events.append((now, "@mounted"))
        if self.loop_folder:
            present = bool(leaks.loops_under(self.loop_folder, exclude=self.skip_loops))
            if present and not self._loops:
                self.run.events.append((now, "@loop"))
            self._loops = present

    def _root_mounted(self) -> bool:
        try:
            with open("/proc/self/mountinfo", encoding="utf-8") as handle:
                for line in handle:
                    fields = line.split()
                    if len(fields) > 4 and fields[4].startswith(self.mount_marker) and fields[4].endswith("/mnt/root"):
                        return True
        except OSError:
            pass
        return False


# ------------------------------------------------------------------------------------------------ environment

class FaultEnv:
    """The folders, services and playbook arguments of one fault-suite run."""

    def __init__(self, root: str, base_url: str, base_sha256: str, registry: str, flash_device: str,
                 served_file: str):
        self.root = os.path.realpath(root)
        self.marker = f"pibake-faults-{uuid.uuid4().hex[:12]}"
        self.base_url = base_url
        self.base_sha256 = base_sha256
        self.served_file = served_file
        self.registry = registry
        self.flash_device = flash_device
        for name in ("work", "deploy", "final", "finwork", "cache", "leases", "logs", "ansible-tmp", "published"):
            os.makedirs(self.path(name), exist_ok=True)
        self.counter = 0
        self.finalize_in_build: Optional[bool] = None  # learnt from the calibration build's log

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def env(self, log: str) -> Dict[str, str]:
        env = dict(os.environ)
        env.pop("PIBAKE_BUILD_LOG", None)
        env.update(
            PIBAKE_FAULT_RUN=self.marker,
            PIBAKE_LEASE_DIR=self.path("leases"),
            PIBAKE_CACHE_DIR=self.path("cache"),
            PIBAKE_BUILD_LOG=log,
            ANSIBLE_ROLES_PATH=TEST_ROLES,
            ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
            ANSIBLE_LOCAL_TEMP=self.path("ansible-tmp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            PYTHONFAULTHANDLER="1",  # a stuck run can be asked for its Python stacks (SIGABRT) before it is killed
        )
        return env

    # -- the pipeline's stages -------------------------------------------------------------------------

    def finalize_args(self) -> List[str]:
        return ["-e", "finalize_version=faults", "-e", "finalize_expansion=none", "-e", "finalize_compression=zstd",
                "-e", "finalize_compression_level=3", "-e", "finalize_margin_mib=4"]

    def build_argv(self, *extra: str, inventory: str = "inventories/cubeos", roles: bool = True) -> List[str]:
        base = {"pibake_base_image": {"type": "url", "url": self.base_url, "sha256": self.base_sha256}}
        argv = [PLAYBOOK_BIN, "playbooks/build-image.yml", "-i", inventory, "-e", "variant=dev",
                "-e", "version=faults", "-e", json.dumps(base), "-e", f"pibake_work_dir={self.path('work')}",
                "-e", f"pibake_deploy_dir={self.path('deploy')}", "-e", "pibake_grow=16M", "-e", "pibake_cache=off"]
        if roles:
            argv += ["-e", '{"pibake_roles": ["pibake_test_busy"]}', "-e", "pibake_test_busy_seconds=1"]
        return argv + self.finalize_args() + list(extra)

    def finalized_dir(self) -> str:
        """Where the finalize step writes: the build's deploy folder once the build finalizes, else final/."""
        return self.path("deploy") if self.finalize_in_build else self.path("final")

    def published_dir(self) -> str:
        """What publish and flash read: a copy of the last complete finalized outputs (see keep_outputs)."""
        return self.path("published")

    def keep_outputs(self) -> None:
        """After a finalize that ran to its end: publish and flash the outputs of the last successful build, as a
        user would, whatever later killed builds left in the deploy folder."""
        shutil.rmtree(self.path("published"), ignore_errors=True)
        shutil.copytree(self.finalized_dir(), self.path("published"))

    def finalize_argv(self) -> List[str]:
        return [PLAYBOOK_BIN, "playbooks/finalize.yml", "-e", f"image={self.path('finwork', NAME + '.img')}",
                "-e", f"deploy_dir={self.path('final')}", *self.finalize_args()]

    def prepare_finalize(self) -> None:
        """finalize.yml changes its image in place: give it a fresh copy of the last built image."""
        shutil.rmtree(self.path("finwork"), ignore_errors=True)
        os.makedirs(self.path("finwork"))
        subprocess.run(["cp", "--sparse=always", self.path("deploy", NAME + ".img"), self.path("finwork", NAME + ".img")],
                       check=True)

    def packed_image(self) -> str:
        folder = self.published_dir()
        for suffix in (".img.zst", ".img.xz"):
            if os.path.exists(os.path.join(folder, NAME + suffix)):
                return os.path.join(folder, NAME + suffix)
        return os.path.join(folder, NAME + ".img.zst")

    def publish_argv(self) -> List[str]:
        return [PLAYBOOK_BIN, "playbooks/publish.yml", "-e", f"pibake_publish_deploy_dir={self.published_dir()}",
                "-e", f"pibake_registry={self.registry}", "-e", "pibake_registry_tls=false",
                "-e", f"pibake_work_dir={self.path('work')}", "-e", "pibake_publish_tag=faults"]

    def flash_argv(self) -> List[str]:
        return [PLAYBOOK_BIN, "playbooks/flash.yml", "-e", f"image={self.packed_image()}",
                "-e", f"device={self.flash_device}", "-e", f"bmap={os.path.join(self.published_dir(), NAME + '.bmap')}",
                "-e", "flash_confirm=true", "-e", f"flash_progress_file={self.path('flash.progress')}"]

    def clean_argv(self) -> List[str]:
        return [PLAYBOOK_BIN, "playbooks/clean.yml"]

    def stages(self) -> List[str]:
        return ["build"] + ([] if self.finalize_in_build else ["finalize"]) + ["publish", "flash"]

    def argv(self, stage: str) -> List[str]:
        return {"build": self.build_argv, "finalize": self.finalize_argv, "publish": self.publish_argv,
                "flash": self.flash_argv, "clean": self.clean_argv}[stage]()

    def drop_base_cache(self) -> None:
        """Make the next build download its base image (a cold cache); a resumable .part is kept."""
        base = self.path("cache", "base")
        for suffix in (".img", ".json"):
            path = os.path.join(base, self.base_sha256 + suffix)
            if os.path.exists(path):
                os.unlink(path)

    # -- running -----------------------------------------------------------------------------------------

    def start(self, stage: str, argv: Optional[List[str]] = None) -> Tuple[Run, subprocess.Popen]:
        self.counter += 1
        log = self.path("logs", f"{self.counter:03d}-{stage}.log")
        out = self.path("logs", f"{self.counter:03d}-{stage}.out")
        if stage == "finalize" and argv is None:
            self.prepare_finalize()
        argv = argv or self.argv(stage)
        with open(out, "w", encoding="utf-8") as handle:
            proc = subprocess.Popen(argv, cwd=REPO, env=self.env(log), stdin=subprocess.DEVNULL, stdout=handle,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        run = Run(stage=stage, index=self.counter, argv=argv, log=log, out=out, started=time.monotonic(), sid=proc.pid)
        return run, proc

    def run(self, stage: str, kill: Optional[Kill] = None, durations: Optional[Dict[str, float]] = None,
            rng=None, timeout: float = 600.0) -> Run:
        """Run a stage to its end, or until ``kill`` fires (then the signal is sent and this returns at once)."""
        run, proc = self.start(stage)
        watcher = Watcher(run, self.path("work") + "/", self.root, skip_loops=[self.flash_device])
        target: Optional[float] = None
        phase = PHASE_BY_NAME[kill.phase] if kill else None
        deadline = run.started + timeout
        started = False
        while proc.poll() is None:
            watcher.poll()
            now = time.monotonic()
            if kill and target is None:
                for when, text in run.events:
                    started = started or _matches(phase.start, text)
                    if kill.hot and started and _matches(phase.hot, text):
                        target = when  # at once: the hot moment is short
                        break
                    if not kill.hot and started:
                        length = (durations or {}).get(kill.phase, 1.0)
                        target = when + kill.fraction * length
                        break
            if kill and target is not None and now >= target:
                run.guards_at_kill = self.guards()
                run.kill = kill
                run.killed_at = now - run.started
                watcher.poll()
                run.landed = phase_of(run.events)
                try:
                    if kill.group:
                        os.killpg(proc.pid, kill.sig)
                    else:
                        os.kill(proc.pid, kill.sig)
                except ProcessLookupError:
                    pass
                self._proc = proc
                return run
            if now > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise AssertionError(f"{stage} run {run.index} took longer than {timeout} s; see {run.out}")
            time.sleep(0.005 if kill and kill.hot and started else 0.05)
        watcher.poll()
        run.events.append((time.monotonic(), "@end"))
        run.returncode = proc.returncode
        if run.returncode == 0 and stage == ("build" if self.finalize_in_build else "finalize"):
            self.keep_outputs()
        return run

    def wait_killed(self, run: Run, timeout: float = 60.0) -> Tuple[Optional[int], str]:
        """Wait for the killed ansible-playbook to exit; returns its exit code and a finding if it would not."""
        proc: subprocess.Popen = self._proc
        finding = ""
        try:
            run.returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            finding = (f"ansible-playbook ({run.stage} run {run.index}) still ran {timeout:.0f} s after "
                       f"{signal.Signals(run.kill.sig).name}; killed it. {stuck_state(proc.pid, run.out)}")
            os.killpg(proc.pid, signal.SIGKILL)
            run.returncode = proc.wait()
        run.events.append((time.monotonic(), "@end"))
        return run.returncode, finding

    def guards(self) -> List[str]:
        """Our lease guards: the processes whose output goes to the lease folder's guard.log."""
        log = os.path.join(self.path("leases"), "guard.log")
        found = []
        for entry in leaks.processes(marker=self.marker):
            try:
                if os.readlink(f"/proc/{entry.split()[0]}/fd/1") == log:
                    found.append(entry)
            except OSError:
                pass
        return found

    def leases(self) -> List[str]:
        folder = self.path("leases")
        return sorted(name for name in os.listdir(folder) if name.endswith(".json")) if os.path.isdir(folder) else []

    def run_clean(self) -> Run:
        run = self.run("clean", timeout=300)
        if run.returncode != 0:
            raise AssertionError(f"clean.yml failed (rc {run.returncode}): {run.output()[-3000:]}")
        return run


def stuck_state(pid: int, out: str) -> str:
    """What a stuck ansible-playbook waits for: its threads' kernel wait channels and, from faulthandler (SIGABRT,
    see PYTHONFAULTHANDLER in FaultEnv.env), its Python stacks, which land at the end of its output file."""
    channels = []
    for tid in sorted(os.listdir(f"/proc/{pid}/task")) if os.path.isdir(f"/proc/{pid}/task") else []:
        try:
            with open(f"/proc/{pid}/task/{tid}/wchan", encoding="utf-8") as handle:
                channels.append(f"{tid}:{handle.read().strip() or '-'}")
        except OSError:
            pass
    children = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,stat=,args="], capture_output=True,
                              text=True).stdout.strip()
    try:
        os.kill(pid, signal.SIGABRT)
        time.sleep(2)
        with open(out, encoding="utf-8", errors="replace") as handle:
            tail = handle.read()[-6000:]
    except OSError:
        tail = ""
    stacks = tail[tail.find("Fatal Python error"):] if "Fatal Python error" in tail else "(no Python stacks)"
    return f"threads {' '.join(channels)}; children: {children or 'none'}; stacks: {stacks}"


# ------------------------------------------------------------------------------------------------ verification

def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


TEMP_NAME = re.compile(r"(\.tmp-(\d+)|\.partial-(\d+)|\.scrub-(\d+)|\.tmp\.(\d+)|\.part)$")


def pid_alive(pid: int) -> bool:
    """A running process (a zombie waiting for its parent does not count)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2:].startswith("Z")


class Outputs:
    """Checks that every output and cache entry is whole, remembering what was verified already."""

    # Which task of which stage removes the temporary files a killed process left in a folder.
    SWEEPERS = {
        "cache": "Resolve the base image",
        "deploy": "Move the outputs into the deploy folder",
        "final": "Move the outputs into the deploy folder",
    }

    def __init__(self, env: FaultEnv):
        self.env = env
        self.verified: Dict[str, Tuple[int, int, int]] = {}
        self.temps: Dict[str, int] = {}  # temp file -> index of the run after which it was first seen

    def _stamp(self, path: str) -> Tuple[int, int, int]:
        info = os.stat(path)
        return (info.st_ino, info.st_mtime_ns, info.st_size)

    def _changed(self, path: str) -> bool:
        return self.verified.get(path) != self._stamp(path)

    def _ok(self, path: str) -> None:
        self.verified[path] = self._stamp(path)

    def folders(self) -> Dict[str, str]:
        return {"cache": self.env.path("cache"), "deploy": self.env.path("deploy"), "final": self.env.path("final")}

    def temp_files(self) -> Dict[str, str]:
        """Temporary files below the output and cache folders: path -> folder kind."""
        found = {}
        for kind, folder in self.folders().items():
            for dirpath, dirnames, filenames in os.walk(folder):
                for name in filenames + dirnames:
                    if TEMP_NAME.search(name):
                        found[os.path.join(dirpath, name)] = kind
        return found

    def check(self, runs_since: List[Run]) -> List[str]:
        """Problems with outputs and caches now; ``runs_since`` are the runs after the previous check."""
        problems = []
        problems += self._check_temps(runs_since)
        problems += self._check_cache()
        problems += self._check_deploy()
        problems += self._check_final()
        return problems

    def _check_temps(self, runs_since: List[Run]) -> List[str]:
        problems = []
        now = self.temp_files()
        for path, kind in now.items():
            match = TEMP_NAME.search(os.path.basename(path))
            pid = next((int(g) for g in match.groups()[1:] if g), 0) if match else 0
            if pid and pid_alive(pid):
                problems.append(f"{path} belongs to process {pid}, which still runs after the build ended")
            self.temps.setdefault(path, self.env.counter)
        for path, first_seen in list(self.temps.items()):
            if path not in now:
                del self.temps[path]
                continue
            kind = now[path]
            sweeper = self.SWEEPERS[kind]
            # A run that started after the file was left and completed the sweeping task must have removed it.
            for run in runs_since:
                if run.index > first_seen and any(sweeper in task for task in run.completed):
                    problems.append(f"{path} (left by a killed run) survived '{sweeper}' of {run.stage} run {run.index}")
                    break
        return problems

    def _check_cache(self) -> List[str]:
        problems = []
        base = self.env.path("cache", "base")
        if os.path.isdir(base):
            for name in os.listdir(base):
                path = os.path.join(base, name)
                if name.startswith(".") or not name.endswith(".img"):
                    continue
                meta = path[:-4] + ".json"
                if not os.path.exists(meta):
                    problems.append(f"cache entry {path} has no metadata {meta}")
                    continue
                if self._changed(path):
                    with open(meta, encoding="utf-8") as handle:
                        recorded = json.load(handle).get("sha256")
                    actual = sha256_of(path)
                    if actual != recorded:
                        problems.append(f"cache entry {path} has sha256 {actual}, its metadata says {recorded}")
                    else:
                        self._ok(path)
        downloads = self.env.path("cache", "downloads")
        if os.path.isdir(downloads):
            served = open(self.env.served_file, "rb").read()
            for name in os.listdir(downloads):
                path = os.path.join(downloads, name)
                data = open(path, "rb").read()
                if name.endswith(".part"):
                    if not served.startswith(data):
                        problems.append(f"resumable download {path} is not a prefix of the served file")
                elif not name.startswith(".") and hashlib.sha256(data).hexdigest() != self.env.base_sha256:
                    problems.append(f"download {path} is complete-named but does not match its sha256")
        return problems

    def _check_deploy(self) -> List[str]:
        problems = []
        folder = self.env.path("deploy")
        visible = sorted(name for name in os.listdir(folder) if not name.startswith("."))
        if not visible:
            return problems
        image = os.path.join(folder, NAME + ".img")
        if os.path.exists(image) and self._changed(image):
            problem = image_problem(image)
            if problem:
                problems.append(f"deploy image {image}: {problem}")
            else:
                self._ok(image)
        if self.env.finalize_in_build:
            problems += self._check_sums(folder)
        unexpected = [name for name in visible if not name.startswith(NAME) and name not in (
            "os.info", "build.log", "rpi-imager.json", "os_list_local.json")]
        if unexpected:
            problems.append(f"unexpected files in the deploy folder: {unexpected}")
        return problems

    def _check_final(self) -> List[str]:
        problems = [] if self.env.finalize_in_build else self._check_sums(self.env.path("final"))
        return problems + [f"(published copy) {p}" for p in self._check_sums(self.env.published_dir())]

    def _check_sums(self, folder: str) -> List[str]:
        """Every ``X.sha256`` whose X is in the folder verifies; the packed image decompresses to X.img's sum."""
        problems = []
        for name in sorted(os.listdir(folder)):
            if not name.endswith(".sha256") or name.startswith("."):
                continue
            sums = os.path.join(folder, name)
            with open(sums, encoding="utf-8") as handle:
                expected, _, target = handle.read().strip().partition(" ")
            target = os.path.join(folder, target.strip().lstrip("*"))
            if os.path.exists(target):
                if self._changed(target) or self._changed(sums):
                    if sha256_of(target) != expected:
                        problems.append(f"{target} does not match {sums}")
                    else:
                        self._ok(target)
                        self._ok(sums)
            elif target.endswith(".img"):
                packed = [p for p in (target + ".zst", target + ".xz") if os.path.exists(p)]
                if packed and (self._changed(packed[0]) or self._changed(sums)):
                    tool = ["zstd", "-dcq"] if packed[0].endswith(".zst") else ["xz", "-dc"]
                    data = subprocess.run(tool + [packed[0]], capture_output=True, check=False)
                    if data.returncode != 0 or hashlib.sha256(data.stdout).hexdigest() != expected:
                        problems.append(f"{packed[0]} does not decompress to the image named in {sums}")
        problems += self._check_manifests(folder)
        return problems

    def _check_manifests(self, folder: str) -> List[str]:
        """os.info (IMAGE, IMAGE_SHA256) and rpi-imager.json (image_download_sha256) name the packed image as it is."""
        problems = []
        claims = []
        info = os.path.join(folder, "os.info")
        if os.path.exists(info):
            values = dict(re.findall(r'^([A-Z0-9_]+)="?(.*?)"?$', open(info, encoding="utf-8").read(), re.M))
            if values.get("IMAGE") and values.get("IMAGE_SHA256"):
                claims.append((info, values["IMAGE"], values["IMAGE_SHA256"]))
        imager = os.path.join(folder, "rpi-imager.json")
        if os.path.exists(imager):
            for entry in json.load(open(imager, encoding="utf-8")).get("os_list", []):
                if entry.get("image_download_sha256"):
                    claims.append((imager, os.path.basename(str(entry.get("url"))), entry["image_download_sha256"]))
        for source, name, digest in claims:
            target = os.path.join(folder, name)
            if not os.path.exists(target):
                problems.append(f"{source} names {name}, which is not in {folder}")
            elif sha256_of(target) != digest:
                problems.append(f"{source} gives a sha256 for {name} that the file does not have")
        return problems


def image_problem(image: str) -> str:
    """'' when ``image`` is a whole Pi image (MBR, FAT boot, ext4 root, both filesystems check clean)."""
    table = subprocess.run(["sfdisk", "--json", image], capture_output=True, text=True, check=False)
    if table.returncode != 0:
        return f"no readable partition table ({table.stderr.strip()[-200:]})"
    parts = json.loads(table.stdout)["partitiontable"].get("partitions", [])
    if len(parts) != 2:
        return f"{len(parts)} partitions instead of 2"
    scratch = image + ".verify"
    try:
        boot, root = parts
        subprocess.run(["dd", f"if={image}", f"of={scratch}", "bs=512", f"skip={root['start']}",
                        f"count={root['size']}", "conv=sparse", "status=none"], check=True)
        fsck = subprocess.run(["e2fsck", "-fn", scratch], capture_output=True, text=True, check=False)
        if fsck.returncode != 0:
            return f"root filesystem does not check clean: {fsck.stdout.strip()[-300:]}"
        marker = subprocess.run(["debugfs", "-R", "cat /etc/pibake-test-marker", scratch], capture_output=True,
                                text=True, check=False)
        if marker.stdout.strip() != "built":
            return "the customization's marker is missing from the root filesystem"
        subprocess.run(["dd", f"if={image}", f"of={scratch}", "bs=512", f"skip={boot['start']}",
                        f"count={boot['size']}", "status=none"], check=True)
        fat = subprocess.run(["fsck.fat", "-n", scratch], capture_output=True, text=True, check=False)
        if fat.returncode != 0:
            return f"boot filesystem does not check clean: {fat.stdout.strip()[-300:]}"
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)
    return ""


def make_served_image(folder: str) -> Tuple[str, str]:
    """The mini arm64 image, xz-compressed into ``folder``; returns (path, sha256)."""
    os.makedirs(folder, exist_ok=True)
    raw = mini_image.cached(os.path.join(folder, "mini.img"))
    subprocess.run(["xz", "-T1", "-3", "-f", raw], check=True)
    packed = raw + ".xz"
    return packed, sha256_of(packed)


def run_quiet(argv: List[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)


def force_cleanup(env: FaultEnv, exclude_loops: List[str]) -> List[str]:
    """Last resort after a finding: unmount and detach what is below our own folder (never anything else)."""
    done = []
    for mountpoint in leaks.mounts_under(env.root):
        if run_quiet(["umount", "-l", mountpoint]).returncode == 0:
            done.append(f"umount {mountpoint}")
    for entry in leaks.loops_under(env.root, exclude=exclude_loops):
        device = entry.split(":", 1)[0]
        if run_quiet(["losetup", "-d", device]).returncode == 0:
            done.append(f"losetup -d {device}")
    for entry in leaks.processes(folder=env.root, marker=env.marker):
        pid = int(entry.split()[0])
        try:
            os.kill(pid, signal.SIGKILL)
            done.append(f"kill {pid}")
        except ProcessLookupError:
            pass
    for name in env.leases():
        os.unlink(env.path("leases", name))
        done.append(f"rm lease {name}")
    work = env.path("work")
    for name in os.listdir(work):
        if os.path.isdir(os.path.join(work, name)) and not leaks.mounts_under(os.path.join(work, name)):
            shutil.rmtree(os.path.join(work, name), ignore_errors=True)
            done.append(f"rm -r {name}")
    return done


Callback = Callable[[str], None]
