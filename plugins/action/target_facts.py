# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Controller-side action for pibake.image.target_facts (see the module for docs)."""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.pibake.image.plugins.module_utils._target_mode import target_mode


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _VALID_ARGS = frozenset()

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        connection = self._play_context.connection or ""
        mode = target_mode(connection)
        root = ""
        if mode == "image":
            root = (task_vars or {}).get("pibake_chroot_root") or self._play_context.remote_addr or ""
        result.update(changed=False, ansible_facts={"pibake_mode": mode, "pibake_image_root": root})
        return result
