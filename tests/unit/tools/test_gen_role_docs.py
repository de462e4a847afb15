# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""tools/gen_role_docs.py: the README table is generated from argument_specs, and --check catches drift."""

import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SPEC = importlib.util.spec_from_file_location("gen_role_docs", os.path.join(REPO, "tools", "gen_role_docs.py"))
gen = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gen)

SPECS = """---
argument_specs:
  main:
    short_description: Demo
    options:
      demo_name:
        type: str
        description: The C(name) with a | pipe.
      demo_items:
        type: list
        elements: dict
        description: [Items, see O(demo_name).]
        options:
          path:
            type: path
            required: true
            description: A path.
      demo_mode:
        type: str
        choices: [a, b]
        description: Mode.
"""


@pytest.fixture()
def role(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "defaults").mkdir()
    (tmp_path / "meta" / "argument_specs.yml").write_text(SPECS)
    (tmp_path / "defaults" / "main.yml").write_text("demo_name: x\ndemo_items: []\ndemo_mode: a\n")
    (tmp_path / "README.md").write_text(f"# demo\n\n{gen.BEGIN}\nold\n{gen.END}\n\ntail\n")
    return tmp_path


def test_writes_table_between_markers(role):
    assert gen.main([str(role)]) == 0
    text = (role / "README.md").read_text()
    assert "old" not in text
    assert text.endswith(f"{gen.END}\n\ntail\n")
    assert "| `demo_name` | str | `x` |  | The `name` with a \\| pipe. |" in text
    assert "| `demo_items[].path` | path |  | yes | A path. |" in text
    assert "str (`a`, `b`)" in text
    assert "see `demo_name`" in text


def test_check_mode(role):
    assert gen.main(["--check", str(role)]) == 1
    gen.main([str(role)])
    assert gen.main(["--check", str(role)]) == 0


def test_check_catches_undocumented_default(role):
    gen.main([str(role)])
    (role / "defaults" / "main.yml").write_text("demo_name: x\ndemo_items: []\ndemo_mode: a\ndemo_extra: 1\n")
    assert gen.main(["--check", str(role)]) == 1


def test_missing_markers_fail(role):
    (role / "README.md").write_text("# no markers\n")
    assert gen.main([str(role)]) == 1


@pytest.mark.parametrize("name", ["base", "networking", "docker"])
def test_repository_roles_are_up_to_date(name):
    assert gen.main(["--check", os.path.join(REPO, "roles", name)]) == 0
