# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake.image.chroot end to end: real `ansible` runs against a native amd64 Debian rootfs directory.

The rootfs comes from `mmdebstrap --variant=apt --include=python3 trixie`, cached as a tarball under
`$PIBAKE_CACHE_DIR/test-rootfs/` (default `~/.cache/pibake/`) keyed by the recipe, and unpacked into a fresh
temporary directory for this module. No bind mounts are needed for the modules used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / ".venv" / "bin" / "ansible"
RECIPE = ["mmdebstrap", "--variant=apt", "--include=python3", "trixie"]
CONNECTION = "pibake.image.chroot"


def _cache_dir() -> Path:
    base = os.environ.get("PIBAKE_CACHE_DIR") or os.path.expanduser("~/.cache/pibake")
    return Path(base) / "test-rootfs"


def rootfs_tarball() -> Path:
    """The cached tarball for RECIPE, built on first use (temporary name, renamed when complete)."""
    key = hashlib.sha256(json.dumps(RECIPE).encode()).hexdigest()[:16]
    cache = _cache_dir()
    tarball = cache / f"trixie-apt-python3-{key}.tar"
    if tarball.exists():
        return tarball
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap is not installed")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{tarball.stem}.{os.getpid()}.tar"  # mmdebstrap picks the format from the .tar suffix
    try:
        subprocess.run(RECIPE + ["--quiet", str(tmp)], check=True, stdin=subprocess.DEVNULL)
        os.rename(tmp, tarball)
    finally:
        if tmp.exists():
            tmp.unlink()
    return tarball


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the chroot connection needs root")
    root = tmp_path_factory.mktemp("chroot-conn") / "root"
    root.mkdir()
    subprocess.run(["tar", "-xpf", str(rootfs_tarball()), "-C", str(root), "--numeric-owner"], check=True)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def run_ansible(inventory: str, module: str, args: str, *extra: str, env=None) -> subprocess.CompletedProcess:
    argv = [str(ANSIBLE), "-i", inventory, "-c", CONNECTION, "all", "-m", module, "-a", args, *extra]
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def ansible(root: Path, module: str, args: str, *extra: str) -> dict:
    """Run one ad hoc task on host `img` (ansible_host=root); return its result from the builtin tree callback."""
    with tempfile.TemporaryDirectory(prefix="pibake-tree-") as tree:
        env = dict(
            os.environ,
            ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
            ANSIBLE_CALLBACKS_ENABLED="ansible.builtin.tree",
            ANSIBLE_CALLBACK_TREE_DIR=tree,
        )
        proc = run_ansible("img,", module, args, "-e", f"ansible_host={root}", *extra, env=env)
        path = os.path.join(tree, "img")
        assert os.path.exists(path), (proc.stdout, proc.stderr)
        with open(path) as f:
            host_result = json.load(f)
    host_result["_rc"] = proc.returncode
    return host_result


def test_command_with_the_root_as_inventory_host(rootfs):
    """The plain ad hoc form: the host name is the root path."""
    proc = run_ansible(f"{rootfs},", "ansible.builtin.command", "cat /etc/debian_version")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = (rootfs / "etc/debian_version").read_text().strip()
    assert f"{rootfs} | CHANGED | rc=0 >>\n{expected}\n" in proc.stdout


def test_command_with_pibake_chroot_root(rootfs):
    result = ansible(
        rootfs,
        "ansible.builtin.command",
        "cat /etc/debian_version",
        "-e",
        "ansible_host=/nonexistent",
        "-e",
        f"pibake_chroot_root={rootfs}",
    )
    assert result["_rc"] == 0, result
    assert result["stdout"] == (rootfs / "etc/debian_version").read_text().strip()


def test_command_environment_is_clean(rootfs):
    result = ansible(rootfs, "ansible.builtin.command", "env", "-e", "ansible_python_interpreter=/usr/bin/python3")
    assert result["_rc"] == 0, result
    env = dict(line.split("=", 1) for line in result["stdout_lines"] if "=" in line)
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["PATH"].startswith("/usr/local/sbin:")
    assert "VIRTUAL_ENV" not in env
    assert not any(str(REPO) in value for value in env.values()), env


def test_copy_content_and_src(rootfs, tmp_path):
    result = ansible(rootfs, "ansible.builtin.copy", "content='hello image\n' dest=/etc/pibake-copy-test")
    assert result["_rc"] == 0 and result["changed"], result
    written = rootfs / "etc/pibake-copy-test"
    assert written.read_text() == "hello image\n"
    st = written.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644)

    src = tmp_path / "payload.bin"
    src.write_bytes(os.urandom(300_000))
    os.chown(src, 65534, 65534)  # a host owner that must not travel into the image
    result = ansible(rootfs, "ansible.builtin.copy", f"src={src} dest=/root/payload.bin mode=0600")
    assert result["_rc"] == 0 and result["changed"], result
    copied = rootfs / "root/payload.bin"
    assert copied.read_bytes() == src.read_bytes()
    st = copied.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600)


def test_fetch_follows_image_symlinks_inside_the_root(rootfs, tmp_path):
    link = rootfs / "tmp/os-release-link"
    link.symlink_to("/etc/os-release")  # absolute: must mean the image's os-release, not the host's
    dest = tmp_path / "fetched"
    result = ansible(rootfs, "ansible.builtin.fetch", f"src=/tmp/os-release-link dest={dest} flat=yes")
    assert result["_rc"] == 0, result
    assert dest.read_text() == (rootfs / "etc/os-release").read_text()
    assert "trixie" in dest.read_text()


def test_setup_min_facts(rootfs):
    result = ansible(rootfs, "ansible.builtin.setup", "gather_subset=min")
    assert result["_rc"] == 0, result
    facts = result["ansible_facts"]
    assert facts["ansible_distribution"] == "Debian"
    assert facts["ansible_distribution_release"] == "trixie"
    assert facts["ansible_env"]["HOME"] == "/root"


def test_become_root_is_a_no_op(rootfs):
    result = ansible(rootfs, "ansible.builtin.command", "id -u", "--become")
    assert result["_rc"] == 0, result
    assert result["stdout"] == "0"


def test_missing_root_fails_with_one_sentence(tmp_path):
    result = ansible(tmp_path / "absent", "ansible.builtin.command", "true")
    assert result["_rc"] != 0
    assert result.get("unreachable"), result
    assert "is not a directory; attach the image first" in result["msg"]


def test_trivial_task_timings(rootfs, tmp_path):
    """Report (not assert) what one trivial command and copy task cost through the connection."""
    timings = {}
    for name, module, args in (
        ("command", "ansible.builtin.command", "true"),
        ("copy", "ansible.builtin.copy", "content=x dest=/tmp/pibake-timing"),
    ):
        start = time.monotonic()
        result = ansible(rootfs, module, args, "-e", "ansible_python_interpreter=/usr/bin/python3")
        timings[name] = time.monotonic() - start
        assert result["_rc"] == 0, result
    print("ad hoc wall time incl. ansible start-up:", {k: round(v, 2) for k, v in timings.items()})
