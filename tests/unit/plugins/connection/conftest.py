# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Install Ansible's collection loader so tests load `pibake.image.*` plugins the way Ansible does."""

from __future__ import annotations

import os
import sys

from ansible.utils.collection_loader import AnsibleCollectionConfig

COLLECTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), *[".."] * 4, ".ansible", "collections")


def _install_collection_loader() -> None:
    if AnsibleCollectionConfig.collection_finder is not None:
        return
    # Modules imported before through the plain sys.path entry carry no collection metadata, and the plugin
    # loader refuses them; drop them so the finder imports the collection afresh.
    for name in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")]:
        del sys.modules[name]
    from ansible.plugins.loader import init_plugin_loader

    init_plugin_loader([os.path.normpath(COLLECTIONS)])


_install_collection_loader()
