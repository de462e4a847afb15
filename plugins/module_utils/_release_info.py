# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Render and parse release metadata as shell-sourceable ``KEY="VALUE"`` lines.

One rendering serves both ``deploy/os.info`` (written by the build playbook) and ``/etc/ourbox/release``
(written into the image by the ``ourbox_contracts`` role), so the two files carry byte-identical lines when both
are rendered from the same dict with the same prefix.

Format (compatible with POSIX ``sh`` sourcing, systemd ``EnvironmentFile=`` and os-release(5) parsers):

- one ``KEY="VALUE"`` per line, no spaces around ``=``, the file ends with a newline;
- keys are the dict keys upper-cased with the prefix in front and must match ``[A-Z_][A-Z0-9_]*``;
- values are always double-quoted; ``\\``, ``"``, ``$`` and `````` are backslash-escaped; newlines and other
  control characters are rejected;
- known keys come first in a fixed order (``KEY_ORDER``), any other keys follow sorted by name.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Mapping, Optional

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError

# Fixed order of the keys the build knows about; anything else is sorted after them.
KEY_ORDER = (
    "name",
    "sku",
    "variant",
    "version",
    "build_time",
    "git_revision",
    "base_image",
    "base_image_sha256",
    "pibake_version",
)

# Keys /etc/ourbox/release must carry (the OurBox release-metadata contract).
OURBOX_REQUIRED_KEYS = (
    "sku",
    "variant",
    "version",
    "build_time",
    "git_revision",
    "base_image",
    "base_image_sha256",
    "pibake_version",
)

_KEY_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")
_LINE_RE = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*)=(.*)$')
_ESCAPED = {"\\", '"', "$", "`"}


def _key(prefix: str, name: str) -> str:
    key = f"{prefix}{name}".upper()
    if not _KEY_RE.match(key):
        raise PibakeError(
            f"Release key {key!r} is not a valid shell variable name; use letters, digits and underscores only."
        )
    return key


def _value(key: str, value: object) -> str:
    if value is None:
        text = ""
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (str, int, float)):
        text = str(value)
    else:
        raise PibakeError(f"Release value for {key} must be a string or number, not {type(value).__name__}; fix it.")
    for char in text:
        if ord(char) < 0x20 or ord(char) == 0x7F:
            raise PibakeError(f"Release value for {key} contains a control character or newline; remove it.")
    return '"' + "".join("\\" + c if c in _ESCAPED else c for c in text) + '"'


def ordered_names(info: Mapping[str, object]) -> list:
    """Dict keys in rendering order: KEY_ORDER first, then the rest sorted."""
    lowered = {str(k).lower(): k for k in info}
    if len(lowered) != len(info):
        raise PibakeError("Release info has two keys that differ only in case; keep one of them.")
    known = [lowered[name] for name in KEY_ORDER if name in lowered]
    rest = sorted((k for k in info if str(k).lower() not in KEY_ORDER), key=lambda k: str(k).lower())
    return known + rest


def render(info: Mapping[str, object], prefix: str = "", required: Iterable[str] = ()) -> str:
    """Render ``info`` as shell-sourceable lines; raise PibakeError naming a missing or bad key."""
    if not isinstance(info, Mapping):
        raise PibakeError("Release info must be a dict of KEY: value pairs; pass pibake_release_info as a dict.")
    missing = [name for name in required if info.get(name) in (None, "") and info.get(name.upper()) in (None, "")]
    if missing:
        raise PibakeError(
            f"Release info lacks {', '.join(missing)}; set them in pibake_release_info (the build playbook does)."
        )
    lines = []
    for name in ordered_names(info):
        key = _key(prefix, str(name))
        lines.append(f"{key}={_value(key, info[name])}")
    return "".join(line + "\n" for line in lines)


def _unquote(raw: str, lineno: int) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] == "'":
        return raw[1:-1]
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        body, out, i = raw[1:-1], [], 0
        while i < len(body):
            char = body[i]
            if char == "\\" and i + 1 < len(body) and body[i + 1] in _ESCAPED:
                out.append(body[i + 1])
                i += 2
                continue
            out.append(char)
            i += 1
        return "".join(out)
    if any(c in raw for c in " \t\"'$`\\;&|<>()"):
        raise PibakeError(f"Line {lineno} of the release file has an unquoted special character; quote the value.")
    return raw


def parse(text: str) -> Dict[str, str]:
    """Parse ``KEY=VALUE`` lines (double, single or no quotes); comments and blank lines are ignored."""
    result: Dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE_RE.match(stripped)
        if not match:
            raise PibakeError(f"Line {lineno} of the release file is not KEY=VALUE; fix or regenerate the file.")
        result[match.group(1)] = _unquote(match.group(2), lineno)
    return result


def strip_prefix(values: Mapping[str, str], prefix: Optional[str]) -> Dict[str, str]:
    """Keys without ``prefix`` (when they carry it), upper-cased, for comparing files rendered with other prefixes."""
    prefix = (prefix or "").upper()
    out = {}
    for key, value in values.items():
        key = key.upper()
        if prefix and key.startswith(prefix):
            key = key[len(prefix):]
        out[key] = value
    return out
