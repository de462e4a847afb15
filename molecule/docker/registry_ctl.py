#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""A test registry for the docker scenario that lives from `prepare` to `cleanup`.

    registry_ctl.py start STATE_DIR   start docker-registry on 127.0.0.1, push two small test images (an arm64
                                      image and an arm64+amd64 index), write STATE_DIR/scenario_vars.yml
                                      (docker_preload_images pinned by digest) and STATE_DIR/registry.json
    registry_ctl.py stop STATE_DIR    stop it and remove its storage (only the process this script started)

Uses tests/support (registry.py, skopeo.py, test_images.py) from the repository.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from tests.support.registry import LocalRegistry  # noqa: E402
from tests.support.skopeo import Skopeo  # noqa: E402
from tests.support.test_images import build_image_layout, build_index_layout, pinned, push_layout  # noqa: E402


def serve(state_dir: str) -> None:
    """Run in the background: registry up, images pushed, ready file written, then wait for SIGTERM."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    with LocalRegistry() as reg, Skopeo(os.path.join(state_dir, "skopeo")) as skopeo:
        reg.start()
        single = build_image_layout(os.path.join(state_dir, "layout-arm64"), arch="arm64",
                                    extra_files={"etc/pibake-test": b"single\n"})
        index = build_index_layout(os.path.join(state_dir, "layout-index"), arches=("arm64", "amd64"),
                                   extra_files={"etc/pibake-test": b"index\n"})
        images = []
        for src, repo, tag in ((single, "pibake-test/busybox", "1"), (index, "pibake-test/multi", "2")):
            dest = reg.ref(repo, tag)
            digest = push_layout(src, dest, skopeo)
            config = skopeo.inspect(pinned(dest, digest), raw=False, extra=["--override-arch", "arm64",
                                                                              "--override-os", "linux"])
            images.append({"name": f"{repo}:{tag}", "ref": pinned(dest, digest), "tls_verify": False,
                           "arm64_config_digest": _config_digest(skopeo, pinned(dest, digest))})
            del config
        info = {"pid": os.getpid(), "address": reg.address, "images": images}
        vars_doc = {"docker_preload_images": [{k: i[k] for k in ("name", "ref", "tls_verify")} for i in images]}
        _write(os.path.join(state_dir, "scenario_vars.yml"), json.dumps(vars_doc, indent=2))
        _write(os.path.join(state_dir, "registry.json"), json.dumps(info, indent=2))
        while not stop:
            time.sleep(0.5)


def _config_digest(skopeo: Skopeo, ref: str) -> str:
    """Digest of the arm64 image config: the image ID docker shows after loading the archive."""
    import hashlib

    proc = skopeo.run("inspect", "--config", "--raw", "--tls-verify=false", "--override-arch", "arm64",
                      "--override-os", "linux", f"docker://{ref}")
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


def _write(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    os.replace(path + ".tmp", path)


def start(state_dir: str, timeout: float = 300) -> None:
    os.makedirs(state_dir, exist_ok=True)
    ready = os.path.join(state_dir, "registry.json")
    if os.path.exists(ready):
        os.unlink(ready)
    log = open(os.path.join(state_dir, "registry_ctl.log"), "ab")  # pylint: disable=consider-using-with
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve", state_dir],  # pylint: disable=consider-using-with
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.exists(ready):
            print(open(ready, encoding="utf-8").read())
            return
        if proc.poll() is not None:
            sys.exit(f"test registry exited with {proc.returncode}; see {state_dir}/registry_ctl.log")
        time.sleep(0.2)
    proc.terminate()
    sys.exit(f"test registry was not ready within {timeout} s; see {state_dir}/registry_ctl.log")


def stop(state_dir: str) -> None:
    ready = os.path.join(state_dir, "registry.json")
    if not os.path.exists(ready):
        return
    with open(ready, encoding="utf-8") as handle:
        pid = json.load(handle)["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    os.unlink(ready)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop", "serve"):
        sys.exit(__doc__)
    {"start": start, "stop": stop, "serve": serve}[sys.argv[1]](sys.argv[2])
