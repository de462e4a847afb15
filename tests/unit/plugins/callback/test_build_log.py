# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake.image.build_log: the build log and the phase/role timings, in a real ansible-playbook run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
BIN = os.path.dirname(sys.executable)


def test_a_looped_task_counts_its_time_once_in_the_role_time(tmp_path):
    tasks = tmp_path / "roles" / "sleepy" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(textwrap.dedent("""\
        - name: Sleep once per item
          ansible.builtin.command: sleep 0.6
          loop: [1, 2, 3]
          changed_when: false
        """))
    playbook = tmp_path / "play.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Timed phase
          hosts: localhost
          gather_facts: false
          roles: [sleepy]
        """))
    log = tmp_path / "build.log"
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_CALLBACKS_ENABLED="pibake.image.build_log", ANSIBLE_ROLES_PATH=str(tmp_path / "roles"),
               PIBAKE_BUILD_LOG=str(log), PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    run = subprocess.run([os.path.join(BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local",
                          "-e", f"ansible_python_interpreter={sys.executable}", str(playbook)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    total = float(re.search(r"pibake timings \(total ([\d.]+) s\)", run.stdout).group(1))
    phase = float(re.search(r"phase Timed phase\s+([\d.]+) s", run.stdout).group(1))
    role = float(re.search(r"role  sleepy\s+([\d.]+) s", run.stdout).group(1))
    # three items of 0.6 s: counted once they are >= 1.8 s; counted per item and again for the task, ~3.6 s
    assert 1.8 <= role <= phase <= total, run.stdout
    assert "pibake timings" in log.read_text()
