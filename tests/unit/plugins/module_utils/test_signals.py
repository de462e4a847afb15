# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
import os
import signal

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _signals


def test_sigterm_unwinds_through_finally():
    previous = signal.getsignal(signal.SIGTERM)
    undone = []
    try:
        _signals.unwind_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                signal.sigtimedwait([], 0.5)  # give the handler a chance to run
            finally:
                undone.append("finally ran")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert undone == ["finally ran"]
