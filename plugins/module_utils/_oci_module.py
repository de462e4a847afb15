# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Module glue shared by oci_publish, oci_pull and oci_mirror: the registry options and progress lines.

The only helper here that touches Ansible is ``registry_argument_spec`` (``env_fallback``); the rest is plain.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

from ansible.module_utils.basic import env_fallback

from ansible_collections.pibake.image.plugins.module_utils._progress import Progress, Ticker


def registry_argument_spec() -> dict:
    """Options of the ``pibake.image.registry`` doc fragment."""
    return {
        "registry": {"type": "str", "fallback": (env_fallback, ["PIBAKE_REGISTRY"])},
        "namespace": {"type": "str", "fallback": (env_fallback, ["PIBAKE_REGISTRY_NAMESPACE"])},
        "tls": {"type": "bool", "fallback": (env_fallback, ["PIBAKE_REGISTRY_TLS"])},
        "ca_file": {"type": "path", "fallback": (env_fallback, ["PIBAKE_REGISTRY_CA_FILE"])},
        "username": {"type": "str", "fallback": (env_fallback, ["PIBAKE_REGISTRY_USER"])},
        "password": {"type": "str", "no_log": True, "fallback": (env_fallback, ["PIBAKE_REGISTRY_PASSWORD"])},
        "retries": {"type": "int", "default": 4},
        "retry_delay": {"type": "float", "default": 1.0},
        "timeout": {"type": "float", "default": 120.0},
        "progress_log": {"type": "path"},
    }


def registry_params(params: dict) -> dict:
    keys = ("registry", "namespace", "tls", "ca_file", "username", "password", "retries", "retry_delay", "timeout")
    return {key: params.get(key) for key in keys}


class TransferProgress:
    """Turns the client's transfer events into lines of the collection's progress log."""

    VERBS = {"upload": "push", "download": "pull", "skip": "skip"}

    def __init__(self, path: Optional[str]):
        self.progress = Progress(path)
        self._tickers: Dict[Tuple[str, str], Ticker] = {}

    def __call__(self, event: dict) -> None:
        name = event["name"]
        if name.startswith("sha256:"):
            name = name[:19]
        if event["event"] == "skip":
            self.progress.log(f"skip {name}: the registry already has it ({event['total'] >> 20} MiB)")
            return
        if event["total"] and event["total"] < (1 << 20):
            return  # small files: no progress lines
        key = (event["event"], name)
        ticker = self._tickers.get(key)
        if ticker is None:  # the first event starts the clock (a resumed upload starts past zero)
            verb = self.VERBS.get(event["event"], event["event"])
            self._tickers[key] = Ticker(self.progress, f"{verb} {name}", event["total"] or None,
                                        start=event["done"], every_pct=10.0)
            return
        ticker.update(event["done"], final=bool(event["total"]) and event["done"] >= event["total"])

    def close(self) -> None:
        self.progress.close()
