# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake.image.from_cwd: relative paths from the command line resolve against the user's folder."""

from __future__ import annotations

import os

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.pibake.image.plugins.filter.paths import FilterModule, from_cwd


def test_a_relative_path_resolves_against_the_working_folder(tmp_path, monkeypatch):
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "x.img").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert from_cwd("deploy/../deploy/x.img") == str(tmp_path / "deploy" / "x.img")


def test_a_relative_value_naming_nothing_here_passes_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert from_cwd("127.0.0.1:5000/ourbox/os:1.0") == "127.0.0.1:5000/ourbox/os:1.0"
    assert from_cwd("deploy/missing.img") == "deploy/missing.img"


@pytest.mark.parametrize("value", ["/srv/os/x.img", "", None, "oci://127.0.0.1:5000/a/b:1", "https://e.x/a.img"])
def test_absolute_paths_urls_and_empty_values_pass_unchanged(value):
    assert from_cwd(value) == value


def test_home_is_expanded():
    assert from_cwd("~/x.img") == os.path.join(os.path.expanduser("~"), "x.img")  # absolute once expanded


def test_a_non_string_is_an_error():
    with pytest.raises(AnsibleFilterError):
        from_cwd(3)


def test_the_filter_is_registered():
    assert FilterModule().filters()["from_cwd"] is from_cwd
