# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Decide from connection settings whether a play customizes an image or a live device."""

from __future__ import annotations

CHROOT_CONNECTIONS = frozenset({"pibake.image.chroot", "chroot", "community.general.chroot"})


def target_mode(connection: str) -> str:
    """Return ``image`` for chroot connections, ``device`` for everything else."""
    return "image" if (connection or "") in CHROOT_CONNECTIONS else "device"
