# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Make the checkout's collection importable for the testinfra tests of this molecule scenario."""

import os
import sys

_REPO = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "..")
)
_COLLECTIONS = os.path.join(_REPO, ".ansible", "collections")
if _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)
