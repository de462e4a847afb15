# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""The one exception type pibake raises for problems a user can fix."""

from __future__ import annotations


class PibakeError(Exception):
    """A failure explained in one sentence that says what to do.

    Modules catch it and call ``fail_json(msg=str(err))``, so the user sees the sentence, never a traceback.
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message
