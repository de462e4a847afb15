# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake.image.progress: progress lines while tasks run, and the output summary, in real ansible-playbook runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
PLUGIN = os.path.join(REPO, "plugins", "callback", "progress.py")
BIN = os.path.dirname(sys.executable)


def _plugin_module():
    spec = importlib.util.spec_from_file_location("pibake_progress_callback", PLUGIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


progress = _plugin_module()


# ------------------------------------------------------------------------------------------------ helpers
def test_last_line_takes_the_newest_non_empty_line(tmp_path):
    path = tmp_path / "p.log"
    path.write_text("first\nsecond\n\n  \n")
    assert progress.last_line(str(path)) == "second"


def test_last_line_of_a_long_file_reads_only_its_tail(tmp_path):
    path = tmp_path / "p.log"
    path.write_text("x" * 100 + "\n" + ("filler\n" * 5000) + "the end\n")
    assert progress.last_line(str(path)) == "the end"


def test_last_line_ignores_missing_empty_and_old_files(tmp_path):
    assert progress.last_line(str(tmp_path / "absent")) is None
    empty = tmp_path / "empty"
    empty.write_text("")
    assert progress.last_line(str(empty)) is None
    old = tmp_path / "old"
    old.write_text("stale\n")
    os.utime(old, (1000, 1000))
    assert progress.last_line(str(old), since=2000) is None
    assert progress.last_line(str(old), since=500) == "stale"


@pytest.mark.parametrize("size,text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB"),
                                       (3 << 30, "3.0 GiB")])
def test_human_size(size, text):
    assert progress.human_size(size) == text


def test_describe_outputs_names_sizes_sparse_use_and_missing_files(tmp_path):
    dense = tmp_path / "os.info"
    dense.write_text("NAME=x\n")
    sparse = tmp_path / "disk.img"
    with open(sparse, "wb") as handle:
        handle.truncate(64 << 20)
    lines = progress.describe_outputs([str(dense), str(sparse), str(tmp_path / "gone.xz")])
    assert lines[0].split() == ["os.info", "7", "B"]
    assert lines[1].startswith("  disk.img") and "64.0 MiB" in lines[1] and "on disk" in lines[1]
    assert lines[2].split() == ["gone.xz", "missing"]


def test_format_seconds():
    assert progress.format_seconds(5.4) == "5s"
    assert progress.format_seconds(125) == "2m05s"


# ------------------------------------------------------------------------------------------------ real runs
SLOW_MODULE = '''\
#!/usr/bin/python
import time
from ansible.module_utils.basic import AnsibleModule

module = AnsibleModule(argument_spec=dict(progress_file=dict(type="path", required=True),
                                          steps=dict(type="int", default=3)))
for step in range(module.params["steps"]):
    with open(module.params["progress_file"], "a") as handle:
        handle.write("push: step %d of %d\\n" % (step + 1, module.params["steps"]))
    time.sleep(0.8)
module.exit_json(changed=False)
'''


def _run(playbook, **env):
    environ = dict(os.environ)
    environ.update({
        "ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg"),
        "ANSIBLE_CALLBACKS_ENABLED": "pibake.image.progress",
        "ANSIBLE_NOCOLOR": "1",
        "PIBAKE_PROGRESS_INTERVAL": "0.3",
        "PIBAKE_PROGRESS_HEARTBEAT": "0",
        "PATH": BIN + os.pathsep + environ.get("PATH", ""),
    })
    environ.pop("PIBAKE_PROGRESS_FILE", None)
    environ.update(env)
    return subprocess.run([os.path.join(BIN, "ansible-playbook"), str(playbook)], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(name="project")
def project_fixture(tmp_path):
    (tmp_path / "playbooks" / "library").mkdir(parents=True)
    (tmp_path / "playbooks" / "library" / "slow_progress.py").write_text(SLOW_MODULE)
    (tmp_path / "build").mkdir()
    return tmp_path


def test_progress_lines_appear_while_tasks_run_and_outputs_are_listed(project):
    stale = project / "build" / "earlier.progress"
    stale.write_text("an old line that must not be shown\n")
    os.utime(stale, (1000, 1000))
    playbook = project / "playbooks" / "p.yml"
    playbook.write_text(textwrap.dedent(f"""\
        - name: Progress test
          hosts: localhost
          connection: local
          gather_facts: false
          vars:
            work: {project}/work
          tasks:
            - name: Write progress to the file the callback hands to every task
              ansible.builtin.shell: >-
                for i in 1 2 3; do echo "download: $((i * 33))%" >> "$PIBAKE_PROGRESS_FILE"; sleep 0.8; done
            - name: Write progress to the file named by the task's progress_file option
              slow_progress:
                progress_file: "{{{{ work }}}}/push.progress"
            - name: Write progress to a file matched by the default build/*.progress pattern
              ansible.builtin.shell: >-
                for i in 1 2 3; do echo "compress: pass $i" >> {project}/build/compress.progress; sleep 0.8; done
            - name: Make outputs
              ansible.builtin.shell: >-
                mkdir -p {project}/stage && head -c 3000 /dev/zero > {project}/stage/os.info &&
                truncate -s 40M {project}/stage/disk.img
            - name: Move the outputs into the deploy folder
              pibake.image.deploy_outputs:
                deploy_dir: "{project}/deploy"
                files:
                  - {{src: "{project}/stage/disk.img", name: disk.img}}
                  - {{src: "{project}/stage/os.info", name: os.info}}
              register: pibake_outputs
        """))
    (project / "work").mkdir()
    proc = _run(playbook)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "  [localhost] download: " in out
    assert "  [localhost] push: step " in out
    assert "  [localhost] compress: pass " in out
    assert "an old line" not in out
    # each line is shown under the task that wrote it, before that task's result
    first_task = out.index("TASK [Write progress to the file the callback")
    second_task = out.index("TASK [Write progress to the file named")
    assert first_task < out.index("download: ") < second_task
    assert second_task < out.index("push: step ") < out.index("TASK [Write progress to a file matched")
    summary = out[out.index(f"pibake outputs ({project}/deploy)"):]
    assert "disk.img  40.0 MiB (" in summary and "on disk)" in summary
    assert "os.info   2.9 KiB" in summary


def test_a_quiet_long_task_gets_still_running_lines(project):
    playbook = project / "playbooks" / "q.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Heartbeat test
          hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Wait without a word
              ansible.builtin.command: sleep 2.5
        """))
    proc = _run(playbook, PIBAKE_PROGRESS_HEARTBEAT="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "  [localhost] still running: Wait without a word (" in proc.stdout
    assert "pibake outputs" not in proc.stdout  # nothing was written into a deploy folder


def test_nothing_is_printed_when_the_callback_is_not_enabled(project):
    playbook = project / "playbooks" / "n.yml"
    playbook.write_text(textwrap.dedent("""\
        - name: Not enabled
          hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Write a progress line
              ansible.builtin.shell: 'echo "download: 50%" >> "${PIBAKE_PROGRESS_FILE:-/dev/null}"; sleep 1'
        """))
    proc = _run(playbook, ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.junit", JUNIT_OUTPUT_DIR=str(project / "junit"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[localhost] download:" not in proc.stdout
