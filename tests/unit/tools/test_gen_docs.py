# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""tools/gen_variables_doc.py and tools/gen_troubleshooting.py: the generated reference pages are complete."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


variables = _load("gen_variables_doc")
trouble = _load("gen_troubleshooting")


# ------------------------------------------------------------------------------------------------ variables
def test_every_role_option_is_in_the_variables_page():
    page = variables.render()
    roles = sorted(os.listdir(os.path.join(REPO, "roles")))
    assert roles
    for role in roles:
        spec_path = os.path.join(REPO, "roles", role, "meta", "argument_specs.yml")
        if not os.path.exists(spec_path):
            continue
        assert f"### `pibake.image.{role}`" in page
        with open(spec_path, encoding="utf-8") as handle:
            specs = yaml.safe_load(handle)["argument_specs"]
        for entry in specs.values():
            for option in (entry or {}).get("options") or {}:
                assert f"| `{option}` |" in page, f"{role}: {option}"


def test_playbook_settings_and_environment_are_listed():
    page = variables.render()
    assert "### `playbooks/flash.yml`" in page
    assert "| `flash_confirm` | `false` |" in page
    assert re.search(r"\| `PIBAKE_CACHE_DIR` \| Cache of base images", page)
    assert "`PIBAKE_VERSION`" not in page  # an os.info key, not an environment variable


def test_variables_check_mode_detects_a_stale_page(tmp_path, monkeypatch):
    monkeypatch.setattr(variables, "REPO", str(tmp_path))
    (tmp_path / "docs" / "reference").mkdir(parents=True)
    monkeypatch.setattr(variables, "render", lambda: "fresh\n")
    assert variables.main(["--check"]) == 1
    assert variables.main([]) == 0
    assert (tmp_path / "docs" / "reference" / "variables.md").read_text() == "fresh\n"
    assert variables.main(["--check"]) == 0


# ------------------------------------------------------------------------------------------------ troubleshooting
def _expr(code):
    return ast.parse(code, mode="eval").body


def test_message_rendering_keeps_text_and_names_values():
    assert trouble._render(_expr("'plain; do this.'")) == "plain; do this."
    assert trouble._render(_expr("f\"{path} is missing; run {cmd!r}.\"")) == "<path> is missing; run <cmd>."
    assert trouble._render(_expr("f\"{module.params['device']} is busy\" + '; stop it.'")) == \
        "<device> is busy; stop it."
    assert trouble._render(_expr("'bad %s value' % x")) == "bad <value> value"
    assert trouble._render(_expr("f\"has {', '.join(names)} and {len(items)} more\"")) == \
        "has <names> and <count> more"
    assert trouble._render(_expr("str(err)")) is None


def test_jinja_parts_become_names():
    assert trouble._jinja("Give {{ device }} and {{ hostvars['x']['image'] | default('') }}") == \
        "Give <device> and <image>"


def test_every_pibake_error_in_the_plugins_is_collected():
    messages, _dynamic = trouble.collect()
    texts = {m.text for m in messages}
    # count literal PibakeError("...") calls independently of the generator
    literal = 0
    for root, _dirs, files in os.walk(os.path.join(REPO, "plugins")):
        for name in files:
            if not name.endswith(".py"):
                continue
            with open(os.path.join(root, name), encoding="utf-8") as handle:
                tree = ast.parse(handle.read())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "PibakeError"
                        and node.args and isinstance(node.args[0], ast.Constant)):
                    literal += 1
                    assert " ".join(node.args[0].value.split()) in texts
    assert literal > 10


def test_yaml_fail_messages_are_collected():
    messages, _dynamic = trouble.collect()
    pull = [m for m in messages if m.path == "playbooks/pull.yml"]
    assert any(m.text.startswith("Give what to pull") and "Require the reference" in m.where for m in pull)


def test_each_message_gets_advice_and_a_place():
    page = trouble.render()
    messages, _dynamic = trouble.collect()
    assert page.count("  What to do: ") == page.count("- **")
    assert page.count("- **") == len({(trouble.component(m.path)[0], m.text) for m in messages})
    for line in page.splitlines():
        if line.startswith("  What to do: "):
            assert line.strip() != "What to do:"


def test_advice_comes_after_the_semicolon_or_from_hints():
    hints = [(re.compile("^special"), "Do the special thing.")]
    assert trouble.advice_for("X is missing; install x.", hints, "default") == "install x."
    assert trouble.advice_for("special case", hints, "default") == "Do the special thing."
    assert trouble.advice_for("No advice here.", hints, "default") == "default"


def test_hints_file_is_valid_and_every_hint_is_used():
    with open(os.path.join(REPO, "tools", "troubleshooting_hints.yml"), encoding="utf-8") as handle:
        hints = yaml.safe_load(handle)
    messages, _dynamic = trouble.collect()
    for hint in hints:
        assert set(hint) == {"match", "do"}
        pattern = re.compile(hint["match"])
        assert any(pattern.search(m.text) for m in messages), f"hint matches no message: {hint['match']}"


def test_list_mode_runs_as_a_script():
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "gen_troubleshooting.py"), "--list"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "playbooks/flash.yml: Give the image and the whole disk" in proc.stdout
