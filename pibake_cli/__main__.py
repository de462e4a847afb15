# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""`python -m pibake_cli` is the `pibake` command."""

import sys

from pibake_cli.cli import main

sys.exit(main())
