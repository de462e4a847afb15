# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""cmdline.txt token editing: one line, other tokens stay where they are."""

import pytest

from ansible_collections.pibake.image.plugins.module_utils._cmdline import edit_text, edit_tokens
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

BASE = "console=serial0,115200 console=tty1 root=PARTUUID=0badcafe-02 rootfstype=ext4 fsck.repair=yes rootwait\n"


def test_append_new_option_at_end():
    text, changed = edit_text(BASE, "cfg80211.ieee80211_regdom", "DE")
    assert changed
    assert text == BASE.rstrip("\n") + " cfg80211.ieee80211_regdom=DE\n"


def test_replace_in_place_keeps_order():
    text, changed = edit_text(BASE, "rootfstype", "btrfs")
    assert changed
    assert text.split()[3] == "rootfstype=btrfs"
    assert text.split()[:3] == BASE.split()[:3]


def test_second_run_is_unchanged():
    once, dummy_changed = edit_text(BASE, "quiet")
    twice, changed = edit_text(once, "quiet")
    assert not changed
    assert twice == once


def test_duplicates_collapse_to_first_position():
    tokens, changed = edit_tokens(["a=1", "b", "a=2", "c"], "a", "3")
    assert changed
    assert tokens == ["a=3", "b", "c"]


def test_multiple_keeps_other_occurrences():
    text, changed = edit_text(BASE, "console", "ttyAMA0,115200", multiple=True)
    assert changed
    assert text.split().count("console=tty1") == 1
    assert text.split()[-1] == "console=ttyAMA0,115200"
    dummy_text, again = edit_text(text, "console", "ttyAMA0,115200", multiple=True)
    assert not again


def test_absent_removes_all_with_key():
    text, changed = edit_text("a b=1 c b=2\n", "b", state="absent")
    assert changed
    assert text == "a c\n"


def test_absent_multiple_removes_exact_token_only():
    text, changed = edit_text(BASE, "console", "tty1", state="absent", multiple=True)
    assert changed
    assert "console=serial0,115200" in text.split()
    assert "console=tty1" not in text.split()


def test_absent_missing_is_unchanged_and_text_untouched():
    odd = "a  b\n\n"
    text, changed = edit_text(odd, "zzz", state="absent")
    assert not changed
    assert text == odd


def test_multiline_input_becomes_one_line():
    text, changed = edit_text("a b\nc\n", "d")
    assert changed
    assert text == "a b c d\n"


@pytest.mark.parametrize("option,value", [("bad key", None), ("a=b", None), ("ok", "has space")])
def test_invalid_input_raises(option, value):
    with pytest.raises(PibakeError):
        edit_text(BASE, option, value)
