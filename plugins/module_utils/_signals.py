# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Let SIGTERM unwind a module like Ctrl-C does, so that its ``finally`` clauses run.

When ansible-playbook is interrupted or terminated it terminates its workers, and each worker passes SIGTERM on
to the process group of the module it runs. Python's default for SIGTERM ends the process on the spot, skipping
every ``finally``: an offset loop device stays attached, a trial folder stays in /dev/shm, a half-written output
stays next to the finished ones. Raised as KeyboardInterrupt instead, the module undoes what it made and dies.
"""

from __future__ import annotations

import signal


def _interrupted(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def unwind_on_sigterm() -> None:
    """Call first thing in a module's main() (main thread only) when it holds resources that need undoing."""
    signal.signal(signal.SIGTERM, _interrupted)
