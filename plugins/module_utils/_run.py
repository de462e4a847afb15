# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Run host commands and turn their failures into PibakeError sentences."""

from __future__ import annotations

import shutil
import subprocess
from typing import Mapping, Optional, Sequence

from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError


def require_tools(*names: str, package_hint: str = "run `make deps`") -> None:
    """Fail with one sentence when a host tool is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise PibakeError(
            f"Required host tool(s) {', '.join(missing)} not found; {package_hint} to install them."
        )


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: Optional[bytes] = None,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
    what: Optional[str] = None,
) -> subprocess.CompletedProcess:
    """Run ``argv`` capturing output; on failure raise PibakeError naming the step and stderr's last line."""
    try:
        proc = subprocess.run(
            list(argv),
            input=input,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise PibakeError(f"Host tool {argv[0]} not found; run `make deps` to install it.") from None
    except subprocess.TimeoutExpired:
        raise PibakeError(f"{what or argv[0]} took longer than {timeout} s; check the host and try again.") from None
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout or b"").decode(errors="replace").strip().splitlines()
        detail = tail[-1] if tail else f"exit code {proc.returncode}"
        raise PibakeError(f"{what or ' '.join(argv[:2])} failed: {detail}")
    return proc


def text(proc: subprocess.CompletedProcess) -> str:
    """Decoded stdout of a finished command."""
    return proc.stdout.decode(errors="replace")
