# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Release metadata rendering: shell-sourceable, stable order, and parse() is its inverse."""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._release_info import (
    OURBOX_REQUIRED_KEYS,
    parse,
    render,
    strip_prefix,
)

INFO = {
    "pibake_version": "0.1.0",
    "version": "1.2.3",
    "sku": "TOO-OBX-MINI-BASE-001",
    "variant": "dev",
    "build_time": "2026-01-02T03:04:05Z",
    "git_revision": "0123abcd",
    "base_image": "debian trixie arm64 (pibake recipe 1a2b)",
    "base_image_sha256": "ab" * 32,
    "name": "ourbox-mini",
    "zz_extra": "x",
    "aa_extra": "y",
}


def test_render_orders_known_keys_then_sorted_rest():
    text = render(INFO, prefix="OURBOX_")
    keys = [line.split("=", 1)[0] for line in text.splitlines()]
    assert keys == [
        "OURBOX_NAME", "OURBOX_SKU", "OURBOX_VARIANT", "OURBOX_VERSION", "OURBOX_BUILD_TIME",
        "OURBOX_GIT_REVISION", "OURBOX_BASE_IMAGE", "OURBOX_BASE_IMAGE_SHA256", "OURBOX_PIBAKE_VERSION",
        "OURBOX_AA_EXTRA", "OURBOX_ZZ_EXTRA",
    ]
    assert text.endswith("\n")
    assert 'OURBOX_BASE_IMAGE="debian trixie arm64 (pibake recipe 1a2b)"' in text


def test_same_dict_same_bytes():
    assert render(dict(reversed(list(INFO.items()))), "OURBOX_") == render(INFO, "OURBOX_")


@pytest.mark.parametrize("value", ['a "quoted" $HOME `id` back\\slash', "it's; rm -rf / & | < >", "", "ünïcode"])
def test_shell_sourcing_returns_the_exact_value(tmp_path, value):
    path = tmp_path / "release"
    path.write_text(render({"sku": value, "version": 7}, prefix="OURBOX_"))
    out = subprocess.run(
        ["sh", "-c", '. "$1" && printf "%s|%s" "$OURBOX_SKU" "$OURBOX_VERSION"', "sh", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out == f"{value}|7"
    assert parse(path.read_text()) == {"OURBOX_SKU": value, "OURBOX_VERSION": "7"}


def test_required_keys_are_enforced():
    info = dict(INFO)
    del info["git_revision"]
    info["sku"] = ""
    with pytest.raises(PibakeError, match="git_revision") as err:
        render(info, required=OURBOX_REQUIRED_KEYS)
    assert "sku" in str(err.value)


@pytest.mark.parametrize("bad", [{"sku": "a\nb"}, {"sku": "tab\there"}, {"bad-key": "x"}, {"sku": ["list"]},
                                 {"Sku": "a", "sku": "b"}])
def test_bad_input_is_rejected(bad):
    with pytest.raises(PibakeError):
        render(bad)


def test_parse_accepts_other_quoting_and_comments():
    assert parse("# c\n\nA=plain\nB='single quoted'\nC=\"esc \\\" \\$ \\\\\"\n") == {
        "A": "plain", "B": "single quoted", "C": 'esc " $ \\'}
    with pytest.raises(PibakeError):
        parse("not a line\n")
    with pytest.raises(PibakeError):
        parse("A=two words\n")


def test_strip_prefix_compares_files_with_different_prefixes():
    ourbox = parse(render(INFO, "OURBOX_"))
    plain = parse(render(INFO, ""))
    assert strip_prefix(ourbox, "OURBOX_") == strip_prefix(plain, "")
