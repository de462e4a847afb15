# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Edit Raspberry Pi ``config.txt`` lines inside conditional sections, keeping everything else in place.

config.txt is read top to bottom; ``[filter]`` lines (``[all]``, ``[pi5]``, ``[cm4]``, ``[gpio4=1]``...) start a
section that applies until the next filter line, and the lines before the first filter apply to all boards.
A later value of the same setting overrides an earlier one.

Each managed line has an *identity*, the part that says which setting it is:
- ``dtparam=name=value[,...]`` -> ``dtparam=name`` (several dtparam lines are normal)
- ``dtoverlay=name[,params]`` -> ``dtoverlay=name`` (several overlays are normal; ``dtoverlay=`` alone is
  its own identity)
- ``key=value`` -> ``key``; a line without ``=`` (``initramfs initrd.img followkernel``) -> its first word.
"""

from __future__ import annotations

from typing import List, Tuple

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

ALL = "all"


def identity(line: str) -> str:
    line = line.strip()
    if "=" not in line:
        return line.split()[0] if line.split() else ""
    key, rest = line.split("=", 1)
    key = key.strip()
    if key == "dtparam":
        return "dtparam=" + rest.split(",", 1)[0].split("=", 1)[0].strip()
    if key == "dtoverlay":
        return "dtoverlay=" + rest.split(",", 1)[0].strip()
    return key


def _is_filter(line: str) -> bool:
    stripped = line.strip()
    return stripped.startswith("[") and stripped.endswith("]")


def _is_setting(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#") and not _is_filter(stripped)


def normalize_section(section: str) -> str:
    section = (section or ALL).strip()
    if section.startswith("[") and section.endswith("]"):
        section = section[1:-1].strip()
    if not section or "]" in section or "[" in section or "\n" in section:
        raise PibakeError(f"config.txt section {section!r} is not valid; give a filter such as all, pi5 or cm4.")
    return section


def sections(lines: List[str]) -> List[Tuple[str, int, int]]:
    """``(filter, start, end)`` per section; ``start`` is the first line after the filter line (or 0 for the
    implicit ``all`` section at the top), ``end`` is exclusive."""
    out: List[Tuple[str, int, int]] = []
    current, start = ALL, 0
    for idx, line in enumerate(lines):
        if _is_filter(line):
            out.append((current, start, idx))
            current, start = line.strip()[1:-1].strip(), idx + 1
    out.append((current, start, len(lines)))
    return out


def edit_lines(lines: List[str], line: str, section: str = ALL, state: str = "present") -> Tuple[List[str], bool]:
    """Return ``(new_lines, changed)`` for one managed line (lines without newlines).

    ``present``: when the identity already appears in a section with this filter, its last occurrence there is
    replaced in place (earlier ones are left: the last wins); otherwise the line is added at the end of the last
    section with this filter, or a new ``[section]`` is appended at the end of the file.
    ``absent``: every line with this identity in sections with this filter is removed.
    """
    if state not in ("present", "absent"):
        raise PibakeError(f"state {state!r} is not valid; use present or absent.")
    line = line.strip()
    if not line or _is_filter(line) or line.startswith("#") or "\n" in line:
        raise PibakeError(f"config.txt line {line!r} is not a setting; give one line such as dtparam=pciex1_gen=3.")
    section = normalize_section(section)
    ident = identity(line)
    matching = [sec for sec in sections(lines) if sec[0] == section]
    hits = [idx for _name, start, end in matching for idx in range(start, end)
            if _is_setting(lines[idx]) and identity(lines[idx]) == ident]
    new = list(lines)
    if state == "absent":
        for idx in reversed(hits):
            del new[idx]
        return new, bool(hits)
    if hits:
        last = hits[-1]
        if new[last].strip() == line:
            return new, False
        new[last] = line
        return new, True
    if matching:
        _name, start, end = matching[-1]
        # insert after the section's last non-blank line, so trailing blank lines keep separating sections
        pos = end
        while pos > start and not new[pos - 1].strip():
            pos -= 1
        new.insert(pos, line)
        return new, True
    while new and not new[-1].strip():
        new.pop()
    if new:
        new.append("")
    new.extend([f"[{section}]", line])
    return new, True


def edit_text(text: str, line: str, section: str = ALL, state: str = "present") -> Tuple[str, bool]:
    lines = text.splitlines()
    new, changed = edit_lines(lines, line, section, state)
    if not changed:
        return text, False
    return "\n".join(new) + "\n", True
