# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""config.txt editing inside conditional sections."""

import pytest

from ansible_collections.pibake.image.plugins.module_utils._configtxt import edit_text, identity, sections
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

PIOS = """# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
arm_64bit=1

[cm4]
otg_mode=1

[pi5]
dtoverlay=dwc2,dr_mode=host

[all]
enable_uart=1
"""


@pytest.mark.parametrize("line,ident", [
    ("dtparam=pciex1_gen=3", "dtparam=pciex1_gen"),
    ("dtparam=i2c_arm=on,spi=on", "dtparam=i2c_arm"),
    ("dtoverlay=dwc2,dr_mode=host", "dtoverlay=dwc2"),
    ("dtoverlay=vc4-kms-v3d", "dtoverlay=vc4-kms-v3d"),
    ("arm_boost=1", "arm_boost"),
    ("initramfs initrd.img followkernel", "initramfs"),
])
def test_identity(line, ident):
    assert identity(line) == ident


def test_sections_top_counts_as_all():
    names = [name for name, _s, _e in sections(PIOS.splitlines())]
    assert names == ["all", "cm4", "pi5", "all"]


def test_new_line_goes_to_end_of_last_all_section():
    text, changed = edit_text(PIOS, "dtparam=watchdog=on")
    assert changed
    assert text.endswith("[all]\nenable_uart=1\ndtparam=watchdog=on\n")
    assert text.startswith(PIOS.rstrip("\n").split("[all]", maxsplit=1)[0])


def test_new_line_in_existing_filter_section_keeps_blank_separator():
    text, changed = edit_text(PIOS, "dtparam=pciex1_gen=3", section="pi5")
    assert changed
    assert "[pi5]\ndtoverlay=dwc2,dr_mode=host\ndtparam=pciex1_gen=3\n\n[all]" in text


def test_new_section_is_appended():
    text, changed = edit_text(PIOS, "arm_boost=1", section="[pi4]")
    assert changed
    assert text.endswith("enable_uart=1\n\n[pi4]\narm_boost=1\n")


def test_replace_in_place_and_idempotent():
    text, changed = edit_text(PIOS, "camera_auto_detect=0")
    assert changed
    assert text.splitlines()[3] == "camera_auto_detect=0"
    again, changed2 = edit_text(text, "camera_auto_detect=0")
    assert not changed2
    assert again == text


def test_same_key_in_other_section_is_not_touched():
    text, changed = edit_text(PIOS, "otg_mode=0", section="all")
    assert changed
    assert "[cm4]\notg_mode=1\n" in text
    assert text.endswith("otg_mode=0\n")


def test_overlay_params_replaced_by_name():
    text, changed = edit_text(PIOS, "dtoverlay=dwc2,dr_mode=peripheral", section="pi5")
    assert changed
    assert "dtoverlay=dwc2,dr_mode=peripheral" in text
    assert "dr_mode=host" not in text


def test_absent_only_in_that_section():
    text, changed = edit_text(PIOS, "dtparam=audio=off", state="absent")
    assert changed
    assert "dtparam=audio" not in text
    dummy_text, changed2 = edit_text(PIOS, "otg_mode=1", section="pi5", state="absent")
    assert not changed2


def test_comment_with_same_key_is_not_a_hit():
    text, changed = edit_text("#arm_boost=1\n", "arm_boost=1")
    assert changed
    assert text == "#arm_boost=1\narm_boost=1\n"


def test_empty_file():
    text, changed = edit_text("", "arm_64bit=1")
    assert changed
    assert text == "arm_64bit=1\n"


@pytest.mark.parametrize("line,section", [("[pi5]", "all"), ("# c", "all"), ("", "all"), ("a=1", "bad]x")])
def test_invalid(line, section):
    with pytest.raises(PibakeError):
        edit_text(PIOS, line, section)
