# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake: a small Python API and command line over ansible-runner for the pibake.image collection.

    import pibake_cli
    result = pibake_cli.build(profile="cubeos", variant="dev", version="dev", on_event=pibake_cli.EventPrinter())
    print(result.rc, result.outputs)
"""

from pibake_cli.api import (
    PibakeCliError,
    RunResult,
    build,
    clean,
    configure,
    find_repo,
    flash,
    prepare_data_disk,
    profiles,
    publish,
    pull,
    run_playbook,
)
from pibake_cli.events import EventPrinter

__version__ = "0.1.0"
__all__ = [
    "EventPrinter", "PibakeCliError", "RunResult", "build", "clean", "configure", "find_repo", "flash",
    "prepare_data_disk", "profiles", "publish", "pull", "run_playbook",
]
