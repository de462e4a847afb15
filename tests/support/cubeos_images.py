# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Small arm64 stand-ins for the CubeOS stack images, pushed to the test registry and pinned for the build.

The cubeos profile's stacks name their images in ``cubeos_images`` (``pihole/pihole:latest``, ...). For the
end-to-end build each of those names gets a busybox image of its own (a long-running, signal-aware shell loop),
pushed to the local registry; ``docker_preload_images`` then pins every name to its registry digest, so the
built image preloads exactly these archives and its first boot runs the profile's compose files unchanged, with
no network access to Docker Hub.

    images = push_stack_images(registry, skopeo, folder)
    e2e.run_build("cubeos", "-e", f"@{images['vars_file']}")
    images["images"]["pihole"] -> {"name": "pihole/pihole:latest", "ref": "127.0.0.1:PORT/...@sha256:...",
                                   "digest": "sha256:...", "image_id": "sha256:..."}
"""

from __future__ import annotations

import json
import os
from typing import Dict

import yaml

from . import test_images

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROFILE_VARS = os.path.join(REPO, "inventories", "cubeos", "group_vars", "all", "roles.yml")
# PID 1 in a container ignores signals it has no handler for: trap TERM so `docker stop` is immediate.
SERVICE_CMD = ("/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done")


def profile_images() -> Dict[str, str]:
    """The cubeos profile's stack images: key -> name:tag."""
    with open(PROFILE_VARS, encoding="utf-8") as handle:
        return dict(yaml.safe_load(handle)["cubeos_images"])


def _config_digest(layout_dir: str) -> str:
    """The image ID docker shows after loading: the digest of the image config, read from the OCI layout."""
    blobs = os.path.join(layout_dir, "blobs", "sha256")
    with open(os.path.join(layout_dir, "index.json"), encoding="utf-8") as handle:
        manifest_digest = json.load(handle)["manifests"][0]["digest"]
    with open(os.path.join(blobs, manifest_digest.split(":", 1)[1]), encoding="utf-8") as handle:
        return json.load(handle)["config"]["digest"]


def push_stack_images(registry, skopeo, folder: str) -> Dict[str, object]:
    """Build and push one image per stack; write ``<folder>/vars.json`` with ``docker_preload_images``."""
    images = {}
    for key, name in sorted(profile_images().items()):
        layout_dir = os.path.join(folder, key)
        src = test_images.build_image_layout(layout_dir, arch="arm64", cmd=SERVICE_CMD,
                                             extra_files={"etc/pibake-test-app": f"{key}\n".encode()})
        dest = registry.ref(f"pibake-test/{key}", "1.0")
        digest = test_images.push_layout(src, dest, skopeo, creds=registry.creds())
        images[key] = {"name": name, "ref": test_images.pinned(dest, digest), "digest": digest,
                       "image_id": _config_digest(layout_dir)}
    vars_file = write_vars_file(images, os.path.join(folder, "vars.json"))
    return {"vars_file": vars_file, "images": images}


def write_vars_file(images: Dict[str, Dict[str, str]], vars_file: str) -> str:
    """Write the build variables (``docker_preload_images`` pinned to ``images``) to ``vars_file``; returns it.

    Also used to make the file again when a reused build's (PIBAKE_E2E_REUSE) temporary copy is gone."""
    with open(vars_file, "w", encoding="utf-8") as handle:
        json.dump({"docker_preload_images": [{"name": i["name"], "ref": i["ref"], "tls_verify": False}
                                             for i in images.values()]}, handle, indent=1)
    return vars_file
