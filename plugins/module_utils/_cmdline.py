# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Edit the Raspberry Pi kernel command line (``cmdline.txt``): one line of space-separated tokens.

A token is ``key`` or ``key=value``; the key is the part before the first ``=``. Edits keep every other token
where it was, so the file stays as the user and the base image wrote it.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def split_tokens(text: str) -> List[str]:
    """Tokens of a cmdline.txt (all lines joined: the firmware reads only the first, extra ones are mistakes)."""
    return text.split()


def token_key(token: str) -> str:
    return token.split("=", 1)[0]


def make_token(option: str, value: Optional[str]) -> str:
    if not option or any(ch.isspace() for ch in option) or "=" in option:
        raise PibakeError(f"cmdline option name {option!r} is not valid; give a name without spaces or '='.")
    if value is None:
        return option
    if any(ch.isspace() for ch in value):
        raise PibakeError(f"cmdline value {value!r} for {option} contains whitespace; cmdline.txt cannot hold it.")
    return f"{option}={value}"


def edit_tokens(
    tokens: List[str], option: str, value: Optional[str] = None, state: str = "present", multiple: bool = False
) -> Tuple[List[str], bool]:
    """Return ``(new_tokens, changed)``.

    ``state=present``: without ``multiple``, the first token with this key is replaced in place by
    ``option[=value]`` and later tokens with the same key are dropped; when the key is absent the token is
    appended. With ``multiple`` (keys that may repeat, such as ``console``), the exact token is ensured.
    ``state=absent``: without ``multiple`` (or without a value), every token with this key is removed; with
    ``multiple`` and a value, only that exact token.
    """
    if state not in ("present", "absent"):
        raise PibakeError(f"state {state!r} is not valid; use present or absent.")
    wanted = make_token(option, value)
    out: List[str] = []
    if state == "absent":
        if multiple and value is not None:
            out = [tok for tok in tokens if tok != wanted]
        else:
            out = [tok for tok in tokens if token_key(tok) != option]
        return out, out != tokens
    if multiple:
        if wanted in tokens:
            return list(tokens), False
        return list(tokens) + [wanted], True
    placed = False
    for tok in tokens:
        if token_key(tok) == option:
            if not placed:
                out.append(wanted)
                placed = True
            continue
        out.append(tok)
    if not placed:
        out.append(wanted)
    return out, out != tokens


def edit_text(text: str, option: str, value: Optional[str] = None, state: str = "present",
              multiple: bool = False) -> Tuple[str, bool]:
    """Edit a whole cmdline.txt; returns the new text (one line plus newline) and whether it changed."""
    tokens = split_tokens(text)
    new_tokens, changed = edit_tokens(tokens, option, value, state, multiple)
    if not changed:
        return text, False
    return " ".join(new_tokens) + "\n", True
