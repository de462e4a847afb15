# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The `pibake` command and Python API over ansible-runner (pibake_cli/)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import tomllib

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import pibake_cli  # noqa: E402  pylint: disable=wrong-import-position
from pibake_cli import api, cli  # noqa: E402  pylint: disable=wrong-import-position
from pibake_cli.events import EventPrinter  # noqa: E402  pylint: disable=wrong-import-position


def _pibake(*args, **env):
    environ = dict(os.environ, PYTHONPATH=REPO, ANSIBLE_NOCOLOR="1")
    environ.update(env)
    return subprocess.run([sys.executable, "-m", "pibake_cli", *args], cwd=REPO, env=environ, capture_output=True,
                          text=True, timeout=300, check=False)


# ------------------------------------------------------------------------------------------------ arguments
def test_base_debian_default_and_release():
    assert api.parse_base("debian") == {"type": "debian"}
    assert api.parse_base("debian:bookworm") == {"type": "debian", "release": "bookworm"}
    assert api.parse_base(None) is None


def test_base_url_needs_its_checksum():
    with pytest.raises(api.PibakeCliError, match="--base-sha256"):
        api.parse_base("https://example.invalid/os.img.xz")
    assert api.parse_base("https://example.invalid/os.img.xz", "ab" * 32) == {
        "type": "url", "url": "https://example.invalid/os.img.xz", "sha256": "ab" * 32}


def test_base_path_is_made_absolute_and_must_exist(tmp_path, monkeypatch):
    image = tmp_path / "base.img.xz"
    image.write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert api.parse_base("base.img.xz") == {"type": "path", "path": str(image)}
    assert api.parse_base("base.img.xz", "cd" * 32)["sha256"] == "cd" * 32
    with pytest.raises(api.PibakeCliError, match="no such file"):
        api.parse_base("missing.img")
    with pytest.raises(api.PibakeCliError, match="needs --base"):
        api.parse_base(None, "cd" * 32)


def test_extra_vars_are_key_value_pairs():
    assert api.parse_extra_vars(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(api.PibakeCliError, match="KEY=VALUE"):
        api.parse_extra_vars(["novalue"])


def test_repo_is_found_from_the_package_and_checked(tmp_path, monkeypatch):
    monkeypatch.delenv("PIBAKE_REPO", raising=False)
    assert api.find_repo() == REPO
    with pytest.raises(api.PibakeCliError, match="not a pibake.image checkout"):
        api.find_repo(str(tmp_path))
    monkeypatch.setenv("PIBAKE_REPO", str(tmp_path))
    with pytest.raises(api.PibakeCliError, match="not a pibake.image checkout"):
        api.find_repo()


def test_profiles_are_the_inventory_folders():
    assert {"cubeos", "ourbox-mini"} <= set(api.profiles(REPO))


def test_unknown_profile_is_refused_before_anything_runs():
    with pytest.raises(api.PibakeCliError, match="no profile 'nosuch'.*cubeos"):
        api.build(profile="nosuch", repo=REPO)


def test_parser_maps_build_options():
    args = cli.build_parser().parse_args(["build", "--profile", "ourbox-mini", "--variant", "prod", "--version",
                                          "1.2.3", "--base", "debian:bookworm", "-e", "pibake_grow=2G"])
    assert (args.command, args.profile, args.variant, args.image_version, args.base, args.extra_vars) == (
        "build", "ourbox-mini", "prod", "1.2.3", "debian:bookworm", ["pibake_grow=2G"])


def test_console_script_points_at_main():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["scripts"]["pibake"] == "pibake_cli.cli:main"
    assert callable(cli.main)


def test_usage_error_exits_2_with_argparse_message():
    proc = _pibake("flash", "--image", "x.img")
    assert proc.returncode == 2
    assert "--device" in proc.stderr


def test_a_fixable_problem_is_one_sentence_not_a_traceback():
    proc = _pibake("build", "--profile", "nosuch")
    assert proc.returncode == 1
    assert proc.stderr.startswith("pibake: There is no profile 'nosuch'")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ event printing
def _events():
    return [
        {"event": "playbook_on_start", "stdout": ""},
        {"event": "playbook_on_play_start", "stdout": "\nPLAY [Build] ***", "event_data": {"play": "Build"}},
        {"event": "playbook_on_task_start", "stdout": "\nTASK [base : Install] ***",
         "event_data": {"task": "Install packages", "role": "base"}},
        {"event": "verbose", "stdout": "  [localhost] download: 40%"},
        {"event": "runner_on_ok", "stdout": "ok: [localhost]", "event_data": {"task_action": "ansible.builtin.apt"}},
        {"event": "runner_on_ok", "stdout": "ok: [localhost] => {msg: hi}",
         "event_data": {"task_action": "ansible.builtin.debug"}},
        {"event": "runner_on_failed", "stdout": "fatal: ignored", "event_data": {"ignore_errors": True}},
        {"event": "runner_on_failed", "stdout": "fatal: [localhost]: FAILED!", "event_data": {}},
        {"event": "playbook_on_stats", "stdout": "PLAY RECAP ***\nlocalhost : ok=1"},
    ]


def test_compact_printer_shows_names_progress_messages_failures_and_recap():
    stream = io.StringIO()
    printer = EventPrinter(stream=stream)
    assert all(printer(event) is True for event in _events())
    assert stream.getvalue().splitlines() == [
        "== Build",
        "-- base : Install packages",
        "  [localhost] download: 40%",
        "ok: [localhost] => {msg: hi}",
        "fatal: [localhost]: FAILED!",
        "PLAY RECAP ***",
        "localhost : ok=1",
    ]


def test_full_printer_shows_everything_ansible_prints():
    stream = io.StringIO()
    printer = EventPrinter(stream=stream, full=True)
    for event in _events():
        printer(event)
    text = stream.getvalue()
    assert "TASK [base : Install] ***" in text and "ok: [localhost]\n" in text and "fatal: ignored" in text


# ------------------------------------------------------------------------------------------------ real runs
def test_clean_runs_the_clean_playbook_for_real():
    proc = _pibake("clean")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== Clean the build environment" in proc.stdout
    assert "-- Reap every session whose owner is gone" in proc.stdout
    assert "stale session(s) reaped" in proc.stdout
    assert "PLAY RECAP" in proc.stdout


def test_exit_status_is_the_playbooks():
    proc = _pibake("pull", "")  # pull.yml's first task refuses an empty reference
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Give what to pull" in proc.stdout
    assert "pibake: pull failed" in proc.stderr


def test_api_streams_progress_lines_and_returns_the_outputs(tmp_path):
    playbook = tmp_path / "playbooks" / "api.yml"
    playbook.parent.mkdir()
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "os.info").write_text("NAME=test\n")
    playbook.write_text(textwrap.dedent(f"""\
        - name: API test
          hosts: localhost
          connection: local
          gather_facts: false
          tasks:
            - name: Download slowly
              ansible.builtin.shell: >-
                for i in 1 2 3; do echo "download: $((i * 33))%" >> "$PIBAKE_PROGRESS_FILE"; sleep 0.8; done
            - name: Move the outputs into the deploy folder
              pibake.image.deploy_outputs:
                deploy_dir: "{tmp_path}/deploy"
                files:
                  - {{src: "{tmp_path}/stage/os.info", name: os.info}}
              register: pibake_outputs
        """))
    stream = io.StringIO()
    result = pibake_cli.run_playbook(
        str(playbook), repo=REPO, on_event=EventPrinter(stream=stream),
        envvars={"ANSIBLE_CALLBACKS_ENABLED": "pibake.image.progress", "PIBAKE_PROGRESS_INTERVAL": "0.3"})
    text = stream.getvalue()
    assert result.rc == 0 and result.ok and result.status == "successful", text
    assert result.outputs == [f"{tmp_path}/deploy/os.info"]
    assert "-- Download slowly" in text
    assert "  [localhost] download: " in text
    assert f"pibake outputs ({tmp_path}/deploy)" in text and "os.info  10 B" in text
    assert result.stats["ok"] == {"localhost": 2}


def test_api_reports_a_missing_playbook():
    with pytest.raises(api.PibakeCliError, match="no such playbook"):
        pibake_cli.run_playbook("does-not-exist.yml", repo=REPO)
