# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Filters ``release_file`` and ``release_parse`` (docs in release_file.yml / release_parse.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from ansible_collections.pibake.image.plugins.module_utils._release_info import parse, render


def release_file(info, prefix="", required=None):
    """Render a release-info dict as shell-sourceable ``KEY="VALUE"`` lines."""
    try:
        return render(info, prefix=prefix or "", required=required or ())
    except PibakeError as err:
        raise AnsibleFilterError(str(err)) from None


def release_parse(text):
    """Parse ``KEY=VALUE`` lines into a dict."""
    try:
        return parse(str(text))
    except PibakeError as err:
        raise AnsibleFilterError(str(err)) from None


class FilterModule:
    def filters(self):
        return {"release_file": release_file, "release_parse": release_parse}
