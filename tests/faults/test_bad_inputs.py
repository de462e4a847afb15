# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Bad inputs: each is answered with one sentence that names the fix, and nothing changes on disk.

Every case runs the real playbook (build-image.yml or publish.yml) as a user would, takes the message of the
task that stopped it from the ansible output, and compares the test folder before and after: no output, no
working copy, no lease, no loop device or mount, no new cache entry, no partial file.

Simulations that must not disturb other work on the machine:
- no free loop device: the build runs in a private mount namespace whose /dev holds no loop device and no
  /dev/loop-control (as in an unprivileged container); the host's loop devices are never touched;
- binfmt not available: PIBAKE_BINFMT_DIR points _binfmt at a path that does not exist (a host where
  binfmt_misc is neither mounted nor mountable);
- the output disk full: the deploy folder is a 1 MiB tmpfs this test mounts (and unmounts) in its own folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from typing import Dict, List, Optional

import pytest
import yaml

from ansible_collections.pibake.image.plugins.module_utils import _base_image
from tests.faults import harness
from tests.faults.conftest import needs_root
from tests.support import leaks, mini_image
from tests.support.fake_deploy import make_deploy
from tests.support.registry import LocalRegistry, free_port

pytestmark = [pytest.mark.faults, needs_root]
MIB = 1 << 20
ROOT_OFFSET = (mini_image.BOOT_START + mini_image.BOOT_SIZE) * 512

# Files a failed run may leave without changing anything a user would call state: lock files and the sha256
# memo of the cache, the guard's log, the publish progress log.
ALLOWED_NEW = re.compile(r"^(cache/base/\.[^/]+\.lock|cache/base/\.pathsums/.*|leases/guard\.log|work/publish\.progress)$")

# A private /dev without loop devices (run through `unshare --mount --propagation private`).
NODEV_SCRIPT = """#!/bin/sh
set -e
D=$(mktemp -d /tmp/pibake-nodev.XXXXXX)
mount -t tmpfs -o mode=755,size=1m pibake-nodev "$D"
for spec in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
  name=${spec%%:*}; rest=${spec#*:}; mknod -m 666 "$D/$name" c ${rest%%:*} ${rest#*:}
done
mkdir "$D/pts" "$D/shm"
mount --bind /dev/pts "$D/pts"
mount --bind /dev/shm "$D/shm"
ln -s /proc/self/fd "$D/fd"
mount --move "$D" /dev
rmdir "$D"
exec "$@"
"""


# ----------------------------------------------------------------------------------------------------- helpers

def failure_message(output: str) -> str:
    """The ``msg`` of the last failed task in ansible's output (YAML or JSON result format)."""
    lines = output.splitlines()
    found = []
    for index, line in enumerate(lines):
        if "FAILED! =>" not in line:
            continue
        rest = line.split("FAILED! =>", 1)[1].strip()
        if rest.startswith("{"):
            data = json.loads(rest)
        else:
            block = []
            for following in lines[index + 1:]:
                if not following.startswith("    "):
                    break
                block.append(following)
            data = yaml.safe_load(textwrap.dedent("\n".join(block))) or {}
        found.append(str(data.get("msg", "")))
    assert found, f"no failed task in the output:\n{output[-3000:]}"
    return found[-1]


def assert_one_sentence(message: str, fix: str, output: str) -> None:
    assert "Traceback (most recent call last)" not in output and "MODULE FAILURE" not in output, output[-3000:]
    text = " ".join(message.split())
    assert text.endswith("."), f"not a sentence: {text!r}"
    assert not re.search(r"[.!?]\s+[A-Z][a-z]", text), f"more than one sentence: {text!r}"
    assert re.search(fix, text), f"the message does not name the fix ({fix}): {text!r}"


def tree(root: str) -> Dict[str, object]:
    """Every file (size, mtime) and folder below ``root``, except the test's own logs and inputs."""
    entries: Dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        if rel.split(os.sep)[0] in ("logs", "ansible-tmp", "inputs"):
            dirnames[:] = []
            continue
        for name in dirnames:
            entries[os.path.normpath(os.path.join(rel, name)) + "/"] = "dir"
        for name in filenames:
            info = os.lstat(os.path.join(dirpath, name))
            entries[os.path.normpath(os.path.join(rel, name))] = (info.st_size, info.st_mtime_ns)
    return entries


def assert_nothing_changed(env: harness.FaultEnv, before: Dict[str, object], baseline: leaks.Baseline) -> None:
    after = tree(env.root)
    changed = []
    for path, value in after.items():
        if path in before and before[path] == value:
            continue
        if path.endswith("/") and path not in before:
            full = os.path.join(env.root, path)
            if not any(not p.endswith("/") and p.startswith(path) and p not in before for p in after):
                continue  # a new empty folder (e.g. the lease folder, the parent of working copies)
        if ALLOWED_NEW.match(path) and path not in before:
            continue
        changed.append(("new " if path not in before else "changed ") + path)
    changed += [f"removed {path}" for path in before if path not in after]
    assert not changed, f"the failed run changed the disk: {changed}"
    assert env.leases() == [], env.leases()
    assert baseline.new_loops() == [] and baseline.new_mounts() == []
    # The lease guard notices that its lease is gone within one poll (0.5 s): give it a moment to exit.
    leaks.wait_until(lambda: not leaks.processes(folder=env.root, marker=env.marker), timeout=15)
    assert not leaks.processes(folder=env.root, marker=env.marker)


class Bad:
    """One folder for the bad-input builds, with the good base image already in its cache."""

    def __init__(self, root: str, served):
        self.env = harness.FaultEnv(os.path.join(root, "run"), served["url"], served["sha256"], "", "",
                                    served["path"])
        self.inputs = self.env.path("inputs")
        os.makedirs(self.inputs, exist_ok=True)
        self.runs = 0
        # The cases that get past the base image use this one; resolving it now keeps the download out of them.
        self.base = _base_image.resolve({"type": "url", "url": served["url"], "sha256": served["sha256"]},
                                        self.env.path("cache"), check_layout=True)

    def play(self, argv: List[str], env: Optional[Dict[str, str]] = None, prefix: List[str] = (),
             expect: str = "", fix: str = "") -> str:
        """Run ``argv`` and check: it fails, its message is one sentence naming ``fix``, nothing changed."""
        self.runs += 1
        before = tree(self.env.root)
        baseline = leaks.Baseline(self.env.root)
        run_env = self.env.env(self.env.path("logs", f"bad-{self.runs:02d}.log"))
        run_env.update(env or {})
        proc = subprocess.run([*prefix, *argv], cwd=harness.REPO, env=run_env, capture_output=True, text=True,
                              timeout=900)
        output = proc.stdout + proc.stderr
        with open(self.env.path("logs", f"bad-{self.runs:02d}.out"), "w", encoding="utf-8") as handle:
            handle.write(output)
        assert proc.returncode != 0, f"the run succeeded:\n{output[-3000:]}"
        message = failure_message(proc.stdout)
        assert re.search(expect, " ".join(message.split())), f"unexpected message {message!r}\n{output[-3000:]}"
        assert_one_sentence(message, fix, output)
        assert_nothing_changed(self.env, before, baseline)
        return message

    def build(self, *extra: str, **kwargs) -> str:
        return self.play(self.env.build_argv(*extra), **kwargs)

    def with_base(self, path: str, **extra) -> str:
        return json.dumps({"pibake_base_image": {"type": "path", "path": path, **extra}})


@pytest.fixture(scope="module")
def bad(tmp_path_factory, served_base):
    return Bad(str(tmp_path_factory.mktemp("bad")), served_base)


def _mini(bad: Bad, name: str, arch: str = "arm64") -> str:
    return mini_image.cached(os.path.join(bad.inputs, name), arch=arch)


def _root_partition(image: str, action) -> None:
    """Take the root filesystem out of ``image``, let ``action(path)`` change it, and put it back."""
    part = image + ".root"
    subprocess.run(["dd", f"if={image}", f"of={part}", "bs=1M", f"skip={ROOT_OFFSET}", "iflag=skip_bytes",
                    "conv=sparse", "status=none"], check=True)
    action(part)
    subprocess.run(["dd", f"if={part}", f"of={image}", "bs=1M", f"seek={ROOT_OFFSET}", "oflag=seek_bytes",
                    "conv=notrunc,sparse", "status=none"], check=True)
    os.unlink(part)


# ----------------------------------------------------------------------------------------------------- base images

def test_corrupt_xz(bad):
    packed = os.path.join(bad.inputs, "corrupt.img.xz")
    shutil.copy(bad.env.served_file, packed)
    with open(packed, "r+b") as handle:
        handle.seek(os.path.getsize(packed) // 2)
        handle.write(b"\xde\xad\xbe\xef" * 64)
    bad.build("-e", bad.with_base(packed), expect=r"corrupt or truncated xz archive", fix=r"download or copy it again")


def test_wrong_sha256(bad):
    spec = {"pibake_base_image": {"type": "url", "url": bad.env.base_url, "sha256": "0" * 64}}
    bad.build("-e", json.dumps(spec), expect=r"has sha256 [0-9a-f]{64}, not the expected 0{64}",
              fix=r"fix pibake_base_image\.sha256 or the url")


def test_not_a_disk_image(bad):
    path = os.path.join(bad.inputs, "photo.img")
    with open(path, "wb") as handle:
        handle.write(os.urandom(4 * MIB))
    bad.build("-e", bad.with_base(path), expect=r"is not a disk image", fix=r"point pibake_base_image at a Raspberry Pi")


def test_gpt_image(bad):
    path = os.path.join(bad.inputs, "gpt.img")
    with open(path, "wb") as handle:
        handle.truncate(64 * MIB)
    subprocess.run(["sfdisk", "-q", path], input=b"label: gpt\n,16M,U\n,\n", check=True)
    bad.build("-e", bad.with_base(path), expect=r"uses a GPT partition table", fix=r"MBR layout of Raspberry Pi OS")


def test_image_without_ext4_root(bad):
    path = _mini(bad, "ext2root.img")
    _root_partition(path, lambda part: subprocess.run(["mkfs.ext2", "-q", "-F", part], check=True))
    bad.build("-e", bad.with_base(path), expect=r"Partition 2 of .* holds no ext4 filesystem",
              fix=r"images with an ext4 root")


def test_root_too_full_to_customize(bad):
    path = _mini(bad, "full.img")
    filler = os.path.join(bad.inputs, "filler")
    with open(filler, "wb") as handle:
        handle.write(os.urandom(40 * MIB))
    _root_partition(path, lambda part: subprocess.run(["debugfs", "-w", "-R", f"write {filler} /filler", part],
                                                      check=True, capture_output=True))
    # Cached beforehand: the case is the build refusing the image, not the cache learning a valid image.
    _base_image.resolve({"type": "path", "path": path}, bad.env.path("cache"), check_layout=True)
    bad.build("-e", bad.with_base(path), "-e", "pibake_grow=0",
              expect=r"has only \d+ MiB free after growing by 0 MiB", fix=r"raise pibake_grow")


def test_x86_64_image_given_as_arm64(bad):
    path = _mini(bad, "amd64.img", arch="amd64")
    # Cached beforehand: the image itself is a valid cache entry (for pibake_arch=x86_64); the build must refuse it.
    _base_image.resolve({"type": "path", "path": path}, bad.env.path("cache"), check_layout=True)
    bad.build("-e", bad.with_base(path), expect=r"built for x86_64, not aarch64", fix=r"set pibake_arch")


# ----------------------------------------------------------------------------------------------------- the host

def test_output_disk_full(bad):
    deploy = bad.env.path("deploy-small")
    os.makedirs(deploy, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=755", "pibake-faults-deploy", deploy], check=True)
    try:
        bad.build("-e", f"pibake_deploy_dir={deploy}", expect=r"No space left on device",
                  fix=r"free space in .*deploy-small")
        assert os.listdir(deploy) == []
    finally:
        subprocess.run(["umount", deploy], check=True)


def test_no_free_loop_device(bad):
    script = os.path.join(bad.inputs, "nodev.sh")
    with open(script, "w", encoding="utf-8") as handle:
        handle.write(NODEV_SCRIPT)
    os.chmod(script, 0o755)
    bad.build(prefix=["unshare", "--mount", "--propagation", "private", script],
              expect=r"No free loop device is available", fix=r"clean\.yml|losetup -d")


def test_binfmt_not_available(bad):
    missing = bad.env.path("no-binfmt-here")
    assert not os.path.exists(missing)
    bad.build(env={"PIBAKE_BINFMT_DIR": missing}, expect=r"binfmt_misc cannot be mounted here",
              fix=r"build on a host .* that allows")
    assert not os.path.exists(missing)


# ----------------------------------------------------------------------------------------------------- settings

def test_unknown_profile(bad):
    argv = bad.env.build_argv(inventory="inventories/no-such-profile", roles=False)
    bad.play(argv, expect=r"lists no roles", fix=r"pick a profile with -i inventories/<profile>, one of .*cubeos")


def test_unknown_variant(bad):
    bad.build("-e", "variant=nightly", expect=r"Variant 'nightly'", fix=r"use -e variant=<one of dev, prod>")


def test_role_variable_of_the_wrong_type(bad):
    message = bad.build("-e", "pibake_test_busy_seconds=soon", expect=r"Role pibake_test_busy rejects its variables",
                        fix=r"fix them in the profile")
    assert "pibake_test_busy_seconds" in message


# ----------------------------------------------------------------------------------------------------- the registry

@pytest.fixture(scope="module")
def finished_deploy(bad):
    return make_deploy(os.path.join(bad.inputs, "deploy"), 1, seed=3)


def test_registry_down(bad, finished_deploy):
    argv = [harness.PLAYBOOK_BIN, "playbooks/publish.yml", "-e", f"pibake_publish_deploy_dir={finished_deploy}",
            "-e", f"pibake_registry=127.0.0.1:{free_port()}", "-e", "pibake_registry_tls=false",
            "-e", f"pibake_work_dir={bad.env.path('work')}"]
    bad.play(argv, expect=r"127\.0\.0\.1", fix=r"(?i)registry")


def test_registry_refusing_credentials(bad, finished_deploy):
    with LocalRegistry(auth=("pibake", "the-right-one")) as registry:
        argv = [harness.PLAYBOOK_BIN, "playbooks/publish.yml", "-e", f"pibake_publish_deploy_dir={finished_deploy}",
                "-e", f"pibake_registry={registry.address}", "-e", "pibake_registry_tls=false",
                "-e", f"pibake_work_dir={bad.env.path('work')}"]
        message = bad.play(argv, env={"PIBAKE_REGISTRY_USER": "pibake", "PIBAKE_REGISTRY_PASSWORD": "wrong"},
                           expect=r"(?i)credentials|401|unauthori|denied", fix=r"PIBAKE_REGISTRY_(USER|PASSWORD)|pibake_registry_(user|password)")
        assert "wrong" not in message
