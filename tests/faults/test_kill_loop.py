# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The kill loop: interrupt the pipeline with SIGINT, SIGTERM and SIGKILL in every phase, again and again.

1. Calibration: one uninterrupted pipeline (build with a cold cache, so the base image is downloaded; finalize
   unless the build does it; publish to a local registry; flash to a loop device) gives each phase's start event
   and length from the stages' build.log.
2. Schedule (all from the seed, so a run can be repeated with PIBAKE_FAULT_SEED): the phases in shuffled rounds,
   a point inside each phase, the signal, whether it goes to the pid or the whole process group (Ctrl-C), whether
   clean.yml runs afterwards, and whether it runs hastily (while the killed run's workers still finish).
3. Each kill hits the next run of the chain, so every build is "the next build" after the previous kill. After a
   kill: wait (bounded) for the killed run's leftover processes and its lease guard, run clean.yml when leftovers
   remain (or when the schedule says so), then check: no loop device, mount or process of ours, no lease, no
   partial output, every cache entry whole and verified.
4. At the end the whole pipeline runs once more and must succeed: outputs verified, the flashed disk holds the
   image, the registry holds the publication.

PIBAKE_FAULT_KILLS (default 50) sets the number of kills; PIBAKE_FAULT_SEED the seed.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import subprocess
import time
import urllib.request
from collections import Counter
from typing import Dict, List, Optional

import pytest

from tests.faults import harness
from tests.faults.conftest import needs_root
from tests.support import leaks

pytestmark = [pytest.mark.faults, needs_root]
REPORT_DIR = os.path.join(harness.REPO, "tests", "output", "faults")
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)


class KillLoop:
    def __init__(self, env: harness.FaultEnv, seed: int, kills: int, say):
        self.env = env
        self.seed = seed
        self.rng = random.Random(seed)
        self.kills_wanted = kills
        self.say = say
        self.outputs = harness.Outputs(env)
        self.baseline = leaks.Baseline(env.root)
        self.durations: Dict[str, float] = {}
        self.stage_of: Dict[str, str] = {}
        self.findings: List[str] = []
        self.records: List[Dict[str, object]] = []
        self.unchecked: List[harness.Run] = []  # runs since the last check
        self.deferred = False  # leftovers of the last kill are left to the next build's own reaping
        self.stats = Counter()
        self.seen = set()
        self.shm_baseline = {name for name in os.listdir("/dev/shm") if name.startswith(".pibake-shrink-")}
        self.shm_suspects: set = set()
        self.shm_suspect_phase = ""

    # -- helpers ------------------------------------------------------------------------------------------

    def run(self, stage: str, kill: Optional[harness.Kill] = None) -> harness.Run:
        if kill and harness.PHASE_BY_NAME[kill.phase].cold_cache:
            self.env.drop_base_cache()
        run = self.env.run(stage, kill=kill, durations=self.durations)
        self.unchecked.append(run)
        return run

    def finding(self, text: str, key: str = "") -> None:
        key = key or text
        if key in self.seen:  # the same problem seen again at a later check
            self.stats["repeated findings"] += 1
        else:
            self.seen.add(key)
            self.findings.append(text)
            self.say(f"  FINDING: {text}")
        done = harness.force_cleanup(self.env, exclude_loops=[self.env.flash_device])
        if done:
            self.say(f"  (forced cleanup: {', '.join(done)})")

    def leftovers(self) -> List[str]:
        found = [f"lease {name}" for name in self.env.leases()]
        found += [f"loop {entry}" for entry in self.baseline.new_loops(exclude=[self.env.flash_device])]
        found += [f"mount {mp}" for mp in self.baseline.new_mounts()]
        work = self.env.path("work")
        found += [f"working folder {os.path.join(work, name)}" for name in os.listdir(work)
                  if os.path.isdir(os.path.join(work, name))]
        return found

    def check(self, context: str) -> None:
        """Everything that must hold whenever nothing of ours runs."""
        problems = []
        procs: List[str] = []

        def no_processes() -> bool:  # one that is just exiting may still show for a moment
            procs[:] = leaks.processes(folder=self.env.root, marker=self.env.marker)
            return not procs

        if not leaks.wait_until(no_processes, timeout=10, interval=0.2):
            problems.append(f"processes left: {leaks.describe(procs)}")
        left = self.leftovers()
        if left:
            problems.append(f"left behind: {leaks.describe(left)}")
        users = leaks.users_of(self.env.flash_device)
        if users:
            problems.append(f"the flash target is still open: {leaks.describe(users)}")
        problems += self.outputs.check(self.unchecked)
        problems += self.shm_leftovers()
        self.unchecked = []
        for problem in problems:
            self.finding(f"{context}: {problem}", key=problem)

    def shm_leftovers(self) -> List[str]:
        """Trial folders of the shrink step (``/dev/shm/.pibake-shrink-*``, memory) that outlive a killed run.

        /dev/shm is shared with other work on the machine, so a folder counts only when it appeared after a kill in
        the shrink or compress phase and is still there, used by no process, at the next check as well.
        """
        now = {name for name in os.listdir("/dev/shm") if name.startswith(".pibake-shrink-")}
        problems = []
        for name in sorted(self.shm_suspects & now):
            path = os.path.join("/dev/shm", name)
            if not leaks.processes(folder=path):
                problems.append(f"shrink trial folder {path} left in memory by the run killed in "
                                f"{self.shm_suspect_phase} before this one")
                shutil.rmtree(path, ignore_errors=True)  # ours: it appeared after that kill and nobody uses it
        last = self.records[-1] if self.records else {}
        fresh = now - self.shm_baseline
        self.shm_suspects = fresh if str(last.get("landed")) in ("shrink", "compress") else set()
        self.shm_suspect_phase = f"kill #{last.get('n')}"
        self.shm_baseline |= now
        return problems

    # -- calibration -----------------------------------------------------------------------------------------

    def calibrate(self) -> None:
        self.env.drop_base_cache()
        runs = []
        build = self.run("build")
        assert build.returncode == 0, f"calibration build failed: {build.output()[-4000:]}"
        self.env.finalize_in_build = any("Compress the image" in task for task in build.completed)
        if self.env.finalize_in_build:
            self.env.keep_outputs()
        runs.append(build)
        for stage in self.env.stages()[1:]:
            run = self.run(stage)
            assert run.returncode == 0, f"calibration {stage} failed: {run.output()[-4000:]}"
            runs.append(run)
        for phase in harness.PHASES:
            for run in runs:
                start = run.event_time(phase.start)
                if start is None:
                    continue
                ends = [when - run.started for when, text in run.events
                        if when - run.started >= start and harness._matches(phase.end, text)]
                self.durations[phase.name] = max(0.2, (min(ends) if ends else run.seconds()) - start)
                self.stage_of[phase.name] = run.stage
                break
        missing = [phase.name for phase in harness.PHASES if phase.name not in self.durations]
        assert not missing, f"the calibration pipeline never reached the phase(s) {missing}"
        self.check("after calibration")
        self.say("calibration: " + ", ".join(f"{name} {self.stage_of[name]} {secs:.1f}s"
                                             for name, secs in self.durations.items()))

    # -- the schedule ----------------------------------------------------------------------------------------

    def schedule(self) -> List[Dict[str, object]]:
        names = [phase.name for phase in harness.PHASES]
        order: List[str] = []
        while len(order) < self.kills_wanted:
            block = names[:]
            self.rng.shuffle(block)
            order += block
        signals = list(SIGNALS) * math.ceil(self.kills_wanted / len(SIGNALS))
        self.rng.shuffle(signals)
        plan = []
        for index, phase in enumerate(order[: self.kills_wanted]):
            plan.append({
                "phase": phase,
                "fraction": self.rng.uniform(0.02, 0.95),
                "sig": signals[index],
                "group": self.rng.random() < 0.5,
                "clean": self.rng.random() < 0.25,
                "hasty": self.rng.random() < 0.3,
                "defer": self.rng.random() < 0.5,
                "hot": bool(harness.PHASE_BY_NAME[phase].hot) and self.rng.random() < 0.5,
            })
        return plan

    # -- one kill --------------------------------------------------------------------------------------------

    def kill_once(self, number: int, item: Dict[str, object]) -> bool:
        phase = str(item["phase"])
        stage = self.stage_of[phase]
        kill = harness.Kill(phase, float(item["fraction"]), int(item["sig"]), bool(item["group"]),
                            hot=bool(item.get("hot")))
        run = self.run(stage, kill=kill)
        if run.kill is None:  # the stage ended before the kill point
            self.stats["missed"] += 1
            self.say(f"#{number} {phase}: {stage} run {run.index} ended (rc {run.returncode}) before the kill point")
            if run.returncode != 0:
                self.finding(f"{stage} run {run.index} failed without a kill: {run.output()[-2000:]}")
            self.check(f"after the un-killed {stage} run {run.index}")
            return False
        sig_name = signal.Signals(kill.sig).name
        target = "group" if kill.group else "pid"
        _rc, stuck = self.env.wait_killed(run)
        if stuck:
            self.finding(stuck)
        # Ansible's workers live in sessions of their own (ansible-core 2.19 detaches them): after SIGINT or SIGTERM
        # the dying ansible-playbook terminates them, after SIGKILL they finish their task as orphans.
        hasty = bool(item["hasty"]) and kill.sig == signal.SIGKILL
        if hasty:
            self.env.run_clean()  # while the killed run's orphaned worker may still be finishing its task
            self.stats["clean.yml hasty"] += 1
        guards_seen = set(run.guards_at_kill)

        quiet = []

        def settled() -> bool:  # twice in a row: a process in the middle of fork or exit can hide for a moment
            guards_seen.update(self.env.guards())
            quiet.append(not leaks.session_members(run.sid) and not leaks.processes(marker=self.env.marker))
            return quiet[-2:] == [True, True]

        if not leaks.wait_until(settled, timeout=90, interval=0.25):
            self.finding(f"{stage} run {run.index}: processes still running 90 s after {sig_name}: "
                         f"{leaks.describe(leaks.processes(folder=self.env.root, marker=self.env.marker))}")
        left = self.leftovers()
        how = "guard" if guards_seen else "none needed"
        next_is_build = item.get("next_stage") == "build"
        if left:
            if guards_seen:
                self.finding(f"{stage} run {run.index} killed in {run.landed or '?'} by {sig_name} to the {target}: "
                             f"its lease guard exited but left {leaks.describe(left)}")
            elif item["defer"] and next_is_build:
                how = "next build"
                self.deferred = True
                self.stats["left to the next build"] += 1
            else:
                self.env.run_clean()
                how = "clean.yml"
                self.stats["clean.yml needed"] += 1
        elif item["clean"]:
            self.env.run_clean()
            self.stats["clean.yml extra"] += 1
        self.stats[f"cleaned by {how}"] += 1
        record = {"n": number, "phase": phase + ("/hot" if kill.hot else ""), "landed": run.landed,
                  "task": run.last_task, "stage": stage,
                  "run": run.index, "signal": sig_name, "target": target, "at": round(run.killed_at or 0, 2),
                  "rc": run.returncode, "hasty": hasty, "cleaned_by": how, "left": left,
                  "guards": sorted(guards_seen)[:3]}
        self.records.append(record)
        self.say(f"#{number} {record['phase']}->{run.landed or '?'} {sig_name}/{target} at {record['at']}s in {stage} run "
                 f"{run.index} [{run.last_task[:60]}] rc={run.returncode} cleaned by {how}")
        if how != "next build":
            self.check(f"kill #{number} ({phase}, {sig_name} to the {target}, {stage} run {run.index})")
        return True

    # -- the end -------------------------------------------------------------------------------------------

    def final_pipeline(self) -> None:
        for stage in self.env.stages():
            run = self.run(stage)
            assert run.returncode == 0, f"the final {stage} run {run.index} failed: {run.output()[-4000:]}"
        self.check("after the final pipeline")
        temps = self.outputs.temp_files()
        if temps:
            self.findings.append(f"temporary files survived the final pipeline: {sorted(temps)}")
        self.verify_flash()
        self.verify_registry()

    def verify_flash(self) -> None:
        packed = self.env.packed_image()
        tool = ["zstd", "-dcq"] if packed.endswith(".zst") else ["xz", "-dc"]
        image = subprocess.run(tool + [packed], capture_output=True, check=True).stdout
        with open(self.env.flash_device, "rb") as handle:
            disk = handle.read(len(image))
        if disk != image:
            self.findings.append(f"the flashed disk {self.env.flash_device} does not hold the image {packed}")

    def verify_registry(self) -> None:
        base = f"http://{self.env.registry}/v2"
        with urllib.request.urlopen(f"{base}/_catalog", timeout=10) as response:
            repos = json.load(response).get("repositories", [])
        tagged = []
        for repo in repos:
            with urllib.request.urlopen(f"{base}/{repo}/tags/list", timeout=10) as response:
                tagged += [f"{repo}:{tag}" for tag in json.load(response).get("tags") or []]
        if not any(ref.endswith(":faults") for ref in tagged):
            self.findings.append(f"the registry holds no faults tag after the final publish: {tagged}")


def test_kill_loop(fault_env, capsys):
    seed = int(os.environ.get("PIBAKE_FAULT_SEED") or random.SystemRandom().randrange(1, 1 << 31))
    kills = int(os.environ.get("PIBAKE_FAULT_KILLS") or 50)
    os.makedirs(REPORT_DIR, exist_ok=True)
    progress = open(os.path.join(REPORT_DIR, "kill-loop.log"), "w", encoding="utf-8")  # noqa: SIM115

    def say(line: str) -> None:
        progress.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        progress.flush()

    with capsys.disabled():
        print(f"\nfault kill loop: seed {seed} (repeat with PIBAKE_FAULT_SEED={seed}), {kills} kills; "
              f"progress in {progress.name}")
    say(f"seed {seed}, {kills} kills, load {os.getloadavg()}")
    started = time.monotonic()
    loop = KillLoop(fault_env, seed, kills, say)
    try:
        loop.calibrate()
        calibrated = time.monotonic()
        plan = loop.schedule()
        for index, item in enumerate(plan):
            item["next_stage"] = loop.stage_of[plan[index + 1]["phase"]] if index + 1 < len(plan) else "build"
        landed = 0
        attempts = 0
        queue = list(plan)
        while queue and attempts < 3 * kills:
            item = queue.pop(0)
            attempts += 1
            if loop.kill_once(landed + 1, item):
                landed += 1
            else:  # try again at an earlier point of the same phase (a hot moment may not come at all)
                item["fraction"] = loop.rng.uniform(0.0, float(item["fraction"]) * 0.5)
                item["hot"] = False
                queue.insert(0, item)
        # Every phase must have been hit at least once where it was aimed.
        hit = Counter(str(record["landed"]) for record in loop.records)
        for phase in harness.PHASES:
            tries = 0
            while hit[phase.name] == 0 and tries < 4:
                tries += 1
                item = {"phase": phase.name, "fraction": loop.rng.uniform(0.0, 0.5), "sig": signal.SIGKILL,
                        "group": loop.rng.random() < 0.5, "clean": False, "hasty": False, "defer": False,
                        "next_stage": "build"}
                if loop.kill_once(landed + 1, item):
                    landed += 1
                    hit = Counter(str(record["landed"]) for record in loop.records)
        if loop.deferred:
            loop.check("after the last kill")
        looped = time.monotonic()
        loop.final_pipeline()
        finished = time.monotonic()
    finally:
        progress.close()
    signals = Counter(f"{r['signal']}/{r['target']}" for r in loop.records)
    summary = [
        f"seed {seed}: {len(loop.records)} kills in {looped - calibrated:.0f} s "
        f"(calibration {calibrated - started:.0f} s, final pipeline {finished - looped:.0f} s, "
        f"total {finished - started:.0f} s, load {os.getloadavg()[0]:.1f})",
        "aimed at:  " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["phase"] for r in loop.records).items())),
        "landed in: " + ", ".join(f"{k} {v}" for k, v in sorted(hit.items())),
        "signals:   " + ", ".join(f"{k} {v}" for k, v in sorted(signals.items())),
        "cleanup:   " + ", ".join(f"{k} {v}" for k, v in sorted(loop.stats.items())),
        f"findings:  {len(loop.findings)}",
    ] + [f"  - {finding}" for finding in loop.findings]
    with open(os.path.join(REPORT_DIR, "kill-loop.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(summary) + "\n")
        json.dump(loop.records, handle, indent=1)
    with capsys.disabled():
        print("\n".join(summary))
    assert len(loop.records) >= kills, f"only {len(loop.records)} of {kills} kills landed"
    missing = [phase.name for phase in harness.PHASES if hit[phase.name] == 0]
    assert not missing, f"no kill landed in {missing}"
    assert not loop.findings, "\n".join(loop.findings)
