#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Push and pull throughput of pibake.image's OCI client against a local docker-registry, next to `cp`.

    .venv/bin/python bench/oci_throughput.py [--mib 320] [--runs 3] [--chunk-mib 16]

Starts Debian's docker-registry on 127.0.0.1 (temporary storage), writes a fake deploy/ whose os.img.xz
stand-in is --mib MiB of incompressible data, then times (median of --runs, warm page cache):
  cp            plain `cp` of os.img.xz to a new file on the same filesystem
  push artifact artifact form only (the file is one blob), into an empty registry each run
  push image    image form only (the same bytes inside an uncompressed tar layer), empty registry each run
  push again    both forms when the registry already has every blob (HEAD checks only)
  pull artifact the collection's pull of the artifact form (stream, hash, verify, rename)
  pull image    the collection's pull of the image form (stream, untar, hash, verify, rename)
Figures are MiB/s of the os.img.xz size and ratios to cp. The numbers are comparable between runs of this
script on one machine, not between machines.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, ".ansible", "collections")]

from tests.support.fake_deploy import MIB, make_deploy  # noqa: E402
from tests.support.registry import LocalRegistry  # noqa: E402

from ansible_collections.pibake.image.plugins.module_utils import _oci  # noqa: E402
from ansible_collections.pibake.image.plugins.module_utils._oci_ref import RegistrySettings  # noqa: E402


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=320)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--chunk-mib", type=int, default=16)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="pibake-bench-oci-")
    try:
        deploy = make_deploy(os.path.join(work, "deploy"), args.mib)
        big = os.path.join(deploy, "os.img.xz")
        size_mib = os.path.getsize(big) / MIB
        subprocess.run(["cat", big], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
        results = {}

        def cp_once():
            target = os.path.join(work, "copy.img.xz")
            subprocess.run(["cp", big, target], check=True)
            os.unlink(target)

        results["cp"] = [timed(cp_once) for _ in range(args.runs)]

        def fresh_push(forms):
            times = []
            for _ in range(args.runs):
                with LocalRegistry() as reg:
                    settings = RegistrySettings.from_sources(
                        {"registry": reg.address, "chunk_size": args.chunk_mib * MIB}, env={})
                    state = os.path.join(work, "state")
                    times.append(timed(lambda: _oci.publish(deploy, settings, "os", "1", forms=forms,
                                                            attach=False, state_dir=state)))
            return times

        results["push artifact"] = fresh_push(["artifact"])
        results["push image"] = fresh_push(["image"])

        with LocalRegistry() as reg:
            settings = RegistrySettings.from_sources({"registry": reg.address, "chunk_size": args.chunk_mib * MIB},
                                                     env={})
            state = os.path.join(work, "state")
            _oci.publish(deploy, settings, "os", "1", state_dir=state)
            results["push again"] = [timed(lambda: _oci.publish(deploy, settings, "os", "1", state_dir=state))
                                     for _ in range(args.runs)]
            for form, tag in (("artifact", "1-artifact"), ("image", "1")):
                def pull_once(tag=tag):
                    dest = os.path.join(work, "pulled")
                    shutil.rmtree(dest, ignore_errors=True)
                    _oci.pull(settings, f"os:{tag}", dest)
                results[f"pull {form}"] = [timed(pull_once) for _ in range(args.runs)]

        cp_median = statistics.median(results["cp"])
        print(f"os.img.xz stand-in: {size_mib:.0f} MiB, chunk {args.chunk_mib} MiB, median of {args.runs} run(s)")
        print(f"{'operation':<14} {'seconds':>8} {'MiB/s':>8} {'x cp time':>10}")
        for name, times in results.items():
            med = statistics.median(times)
            print(f"{name:<14} {med:8.2f} {size_mib / med:8.1f} {med / cp_median:10.1f}")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process (all steps): {peak:.0f} MiB")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
