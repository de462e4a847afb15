# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The release_file / release_parse filters through Ansible's templar, as a playbook uses them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ansible.errors import AnsibleFilterError
from ansible_collections.pibake.image.plugins.filter.release import FilterModule, release_file, release_parse


def test_filters_are_registered():
    assert set(FilterModule().filters()) == {"release_file", "release_parse"}


def test_round_trip():
    text = release_file({"sku": "X", "version": "1"}, prefix="OURBOX_")
    assert text == 'OURBOX_SKU="X"\nOURBOX_VERSION="1"\n'
    assert release_parse(text) == {"OURBOX_SKU": "X", "OURBOX_VERSION": "1"}


def test_error_is_a_filter_error():
    with pytest.raises(AnsibleFilterError, match="lacks sku"):
        release_file({}, required=["sku"])


def test_filter_in_a_playbook(tmp_path):
    """ansible-playbook resolves pibake.image.release_file from the checkout and renders the same bytes."""
    out = tmp_path / "release"
    playbook = tmp_path / "p.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.copy:\n"
        "        dest: " + str(out) + "\n"
        "        content: \"{{ info | pibake.image.release_file(prefix='OURBOX_') }}\"\n"
        "        mode: '0644'\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), str(playbook), "-e",
         '{"info": {"sku": "S", "version": "v"}}'],
        cwd=repo, capture_output=True, text=True, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.read_text() == release_file({"sku": "S", "version": "v"}, prefix="OURBOX_")
