# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Make `ansible_collections.pibake.image` importable from the checkout for every test."""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO, ".ansible", "collections")
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
