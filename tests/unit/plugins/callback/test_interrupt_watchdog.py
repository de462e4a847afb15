# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake.image.interrupt_watchdog: a real ansible-playbook whose worker streams results through the results queue
is interrupted again and again; every run must end with 99 within seconds. Without the watchdog ansible-core 2.19
hangs in about one interrupt in eight here (its cleanup waits for a queue lock the ended worker left taken)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
BIN = os.path.dirname(sys.executable)
INTERRUPTS = 6


def test_every_interrupted_run_ends(tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Stream results
          hosts: localhost
          gather_facts: false
          tasks:
            - name: Send one large result per item, without pause
              ansible.builtin.debug:
                msg: "{{ 'x' * 200000 }}"
              loop: "{{ range(100000) | list }}"
        """))
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACKS_ENABLED="pibake.image.interrupt_watchdog", PIBAKE_INTERRUPT_GRACE="1",
               PIBAKE_INTERRUPT_DEADLINE="20", PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    rng = random.Random(os.getpid())
    ended = []
    for attempt in range(INTERRUPTS):
        out = tmp_path / f"run{attempt}.txt"
        with open(out, "w", encoding="utf-8") as handle:
            proc = subprocess.Popen([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
                                     "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                                    cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(rng.uniform(3.0, 4.5))  # well into the loop
        os.kill(proc.pid, signal.SIGINT)
        interrupted = time.monotonic()
        try:
            returncode = proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"ansible-playbook still ran 40 s after SIGINT: {out.read_text()[-3000:]}")
        output = out.read_text()
        assert returncode == 99, output[-3000:]
        assert "Traceback" not in output
        ended.append((round(time.monotonic() - interrupted, 1), "left locked" in output))
    assert all(seconds < 10 for seconds, _locked in ended), ended
