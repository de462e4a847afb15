# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Filter ``from_cwd`` (docs in from_cwd.yml)."""

from __future__ import annotations

import os

from ansible.errors import AnsibleFilterError

# Local modules run in the playbook's folder, not where the user typed the command: a relative -e image=deploy/...
# has to be made absolute on the controller, whose working folder is the user's.
_NOT_PATHS = ("oci://", "http://", "https://", "file://")


def from_cwd(path):
    """``path`` made absolute against the folder ansible-playbook was started in when it exists there."""
    if path is None:
        return path
    if not isinstance(path, str):
        raise AnsibleFilterError(f"from_cwd expects a path string, got {type(path).__name__}")
    if not path or path.startswith(_NOT_PATHS):
        return path
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return expanded
    # Only what exists here is a path of the user's; anything else (a registry reference such as
    # 127.0.0.1:5000/ourbox/os:1.0) goes through unchanged for the module to judge.
    resolved = os.path.normpath(os.path.join(os.getcwd(), expanded))
    return resolved if os.path.exists(resolved) else path


class FilterModule:
    def filters(self):
        return {"from_cwd": from_cwd}
