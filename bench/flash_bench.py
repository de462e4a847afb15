#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Time flashing one compressed image to a loop device: plain dd, bmaptool copy, pibake flash (bmap / no bmap).

    sudo .venv/bin/python bench/flash_bench.py                       # builds a 2 GiB image with ~1 GB of data
    sudo .venv/bin/python bench/flash_bench.py --image ~/.cache/pibake/base/<digest>.img
    sudo .venv/bin/python bench/flash_bench.py --compress xz         # the OurBox guide's xzcat | dd (slow to make)

Each method writes to a fresh sparse backing file attached as a loop device (detached afterwards); every method
ends with the data synced (dd conv=fsync, bmaptool's fsync, pibake's fsync). pibake's read-back verification is
timed separately. Figures on a loaded shared machine: read them as ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, ".ansible", "collections"))

from ansible_collections.pibake.image.plugins.module_utils import _flash  # noqa: E402

MIB = 1 << 20
BOOT_START, BOOT_MIB = 8192, 512  # as Raspberry Pi OS; a 256 MiB FAT32 falls under the FAT32 cluster minimum


def sh(*argv, **kwargs):
    kwargs.setdefault("check", True)
    return subprocess.run([str(a) for a in argv], **kwargs)


def stage_files(dest: str, want: int, sources=("/usr/bin", "/usr/share", "/usr/lib")) -> int:
    """Hard-link real files (binaries, docs, locales: a realistic mix) into ``dest`` until ``want`` bytes."""
    total = 0
    for top in sources:
        for folder, _dirs, files in os.walk(top):
            for name in files:
                src = os.path.join(folder, name)
                try:
                    st = os.lstat(src)
                except OSError:
                    continue
                if not os.path.isfile(src) or os.path.islink(src) or st.st_size == 0:
                    continue
                target = os.path.join(dest, os.path.relpath(folder, "/"), name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                try:
                    os.link(src, target)
                except OSError:
                    shutil.copy2(src, target)
                total += st.st_size
                if total >= want:
                    return total
    return total


def big_files(top: str):
    for folder, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                yield os.path.getsize(path), path


def build_image(path: str, size: int, data: int, work: str) -> None:
    with open(path, "wb") as handle:
        handle.truncate(size)
    boot_sectors = BOOT_MIB * MIB // 512
    root_start = BOOT_START + boot_sectors
    sh("sfdisk", "-q", path, input=f"label: dos\nlabel-id: 0x5eedbe4c\nstart={BOOT_START}, size={boot_sectors}, type=c\n"
                                   f"start={root_start}, type=83\n".encode())
    sh("mkfs.fat", "-F", "32", "-n", "BOOTFS", "--offset", BOOT_START, path, boot_sectors // 2,
       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    boot = os.path.join(work, "boot")
    os.makedirs(boot)
    boot_data = 0
    for index, src in enumerate(sorted(big_files("/usr/lib"), reverse=True)[:200]):
        shutil.copyfile(src[1], os.path.join(boot, f"blob{index:03d}.bin"))  # flat: kernels, initrds, dtbs
        boot_data += src[0]
        if boot_data >= 40 * MIB:
            break
    with open(os.path.join(boot, "cmdline.txt"), "w", encoding="ascii") as handle:
        handle.write("console=serial0,115200 root=PARTUUID=5eedbe4c-02 rootfstype=ext4 rootwait\n")
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    sh("mcopy", "-s", "-i", f"{path}@@{BOOT_START * 512}", *[os.path.join(boot, n) for n in os.listdir(boot)], "::/", env=env)
    root = os.path.join(work, "root")
    os.makedirs(os.path.join(root, "etc"))
    staged = stage_files(root, data)
    print(f"root data: {staged / 1e9:.2f} GB of host files", flush=True)
    sh("mkfs.ext4", "-q", "-F", "-L", "rootfs", "-d", root, "-E", f"offset={root_start * 512}", path,
       f"{(size - root_start * 512) // 1024}k")


class Loop:
    def __init__(self, folder: str, size: int):
        self.backing = os.path.join(folder, "target.bin")
        with open(self.backing, "wb") as handle:
            handle.truncate(size)
        self.dev = subprocess.run(["losetup", "-f", "--show", self.backing], check=True, capture_output=True,
                                  text=True).stdout.strip()

    def close(self):
        for attempt in range(10):
            if subprocess.run(["losetup", "-d", self.dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.2 * (attempt + 1))
        os.unlink(self.backing)


def timed(label, size, folder, action):
    os.sync()  # start every method with no dirty pages of an earlier one still being written out
    time.sleep(2)
    loop = Loop(folder, size)
    try:
        start = time.monotonic()
        extra = action(loop.dev) or {}
        took = time.monotonic() - start
    finally:
        loop.close()
    return label, took, extra


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", help="an existing raw .img (a copy is compressed); default: build one")
    parser.add_argument("--size", type=int, default=2048, help="MiB of the built image (default 2048)")
    parser.add_argument("--data", type=int, default=1000, help="MB of files in the built image (default 1000)")
    parser.add_argument("--compress", choices=["zstd", "xz"], default="zstd")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of all methods (default 1)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (image, bmap, compressed copy)")
    parser.add_argument("--workdir", default=None, help="folder for the temporary files (default: a new temp dir)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root (loop devices)", file=sys.stderr)
        return 2
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="pibake-flash-bench-", dir=args.workdir)
    try:
        image = os.path.join(work, "os.img")
        start = time.monotonic()
        if args.image:
            sh("cp", "--sparse=always", args.image, image)
        else:
            build_image(image, args.size * MIB, args.data * 1000 * 1000, work)
        print(f"image built in {time.monotonic() - start:.1f} s", flush=True)
        start = time.monotonic()
        sh("bmaptool", "create", "-o", image + ".bmap", image, stderr=subprocess.DEVNULL)
        print(f"bmaptool create: {time.monotonic() - start:.1f} s", flush=True)
        start = time.monotonic()
        if args.compress == "zstd":
            sh("zstd", "-q", "-3", "-T0", "-k", image)
            packed, cat = image + ".zst", ["zstd", "-dcq"]
        else:
            sh("xz", "-k", "-6", "-T0", image)
            packed, cat = image + ".xz", ["xz", "-dc", "-T0"]
        print(f"{args.compress} compress: {time.monotonic() - start:.1f} s", flush=True)
        size = os.path.getsize(image)
        source = _flash.open_source(packed)
        mapped = source.bmap.mapped_bytes
        print(f"image {size / MIB:.0f} MiB, mapped {mapped / MIB:.0f} MiB ({mapped * 100 // size} %), "
              f"{packed.rsplit('.', 1)[1]} {os.path.getsize(packed) / MIB:.0f} MiB", flush=True)
        target = size + 256 * MIB

        def dd(dev):
            cat_proc = subprocess.Popen(cat + [packed], stdout=subprocess.PIPE)
            sh("dd", f"of={dev}", "bs=4M", "conv=fsync", "status=none", stdin=cat_proc.stdout)
            cat_proc.stdout.close()
            if cat_proc.wait() != 0:
                raise RuntimeError("decompression failed")

        def bmaptool(dev):
            sh("bmaptool", "-q", "copy", "--bmap", image + ".bmap", packed, dev)

        def pibake(use_bmap):
            def run(dev):
                result = _flash.flash(packed, dev, confirm=True, use_bmap=use_bmap, verify=True)
                return result["seconds"]
            return run

        methods = [
            (f"{' '.join(cat)} | dd bs=4M conv=fsync", dd),
            ("bmaptool copy", bmaptool),
            ("pibake flash (bmap)", pibake(True)),
            ("pibake flash (no bmap)", pibake(False)),
        ]
        rows = [timed(label, target, work, action) for _round in range(args.repeat) for label, action in methods]
        print()
        print(f"{'method':40} {'total s':>8} {'write s':>8} {'verify s':>9}")
        for label, took, extra in rows:
            write = extra.get("write", took)
            verify = extra.get("verify")
            print(f"{label:40} {took:8.1f} {write:8.1f} {verify if verify is not None else '-':>9}")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
