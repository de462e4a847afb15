# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
