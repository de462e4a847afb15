# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake.image.chroot's persistent interpreter end to end, on real roots, compared with the plain path.

* native amd64: two fresh copies of the cached trixie rootfs (see test_connection_chroot.py), one playbook run
  with ``pibake_chroot_persistent`` on and one with it off: every registered result must match.
* arm64: a copy of the cached Debian base image (``~/.cache/pibake/base/debian-trixie-arm64-*.img``) attached with
  the image session: the same playbook both ways, facts say aarch64, ``ansible.builtin.apt`` works (it installs
  python3-apt and respawns, then imports the apt bindings in a forked child).
* detaching a session kills the server and unmounts cleanly.

The servers' sockets go to a temporary ``PIBAKE_FORKSERVER_DIR``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _forkserver, _lease, _mounts, _session
from tests.integration.test_connection_chroot import REPO, rootfs_tarball

pytestmark = pytest.mark.integration

PLAYBOOK = REPO / "tests" / "integration" / "playbooks" / "persistent-interpreter.yml"
VOLATILE = {"start", "end", "delta", "atime", "mtime", "ctime", "inode", "src", "invocation",
            "ansible_date_time", "version"}


def extract_rootfs(parent: Path, name: str) -> Path:
    root = parent / name
    root.mkdir()
    subprocess.run(["tar", "-xpf", str(rootfs_tarball()), "-C", str(root), "--numeric-owner"], check=True)
    return root


def run_playbook(root: str, persistent: bool, workdir: Path, state_dir: str, extra=()) -> dict:
    out = workdir / f"results-{persistent}.json"
    inventory = workdir / f"inventory-{persistent}.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"img": {
        "ansible_connection": "pibake.image.chroot", "pibake_chroot_root": root,
        "ansible_python_interpreter": "/usr/bin/python3", "pibake_chroot_persistent": persistent,
    }}}}))
    env = dict(os.environ, PIBAKE_FORKSERVER_DIR=state_dir)
    start = time.monotonic()
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK), "-vvv",
         "-e", f"pibake_results={out}", *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=3600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    results["_log"] = proc.stdout
    results["_seconds"] = time.monotonic() - start
    return results


def normalized(value):
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


def compare(plain: dict, persistent: dict) -> None:
    for name in plain:
        if name.startswith("_"):
            continue
        want, have = normalized(plain[name]), normalized(persistent[name])
        if name == "env":  # the same variables; their order is the shell's hash table order
            assert sorted(want.pop("stdout_lines")) == sorted(have.pop("stdout_lines")), name
            want.pop("stdout"), have.pop("stdout")
        if name == "setup":
            want_facts, have_facts = want.pop("ansible_facts"), have.pop("ansible_facts")
            assert sorted(want_facts) == sorted(have_facts)
            for fact in want_facts:
                if fact != "ansible_env":
                    assert want_facts[fact] == have_facts[fact], fact
            assert {k: v for k, v in want_facts["ansible_env"].items() if k != "_"} == \
                {k: v for k, v in have_facts["ansible_env"].items() if k != "_"}
        assert want == have, name


def used_paths(log: str) -> dict:
    """Which tasks went through the persistent interpreter, read from -vvv output."""
    return {
        "persistent": log.count("(persistent interpreter"),
        "started": log.count("(persistent interpreter, started;"),
        "declined": log.count("persistent interpreter not used"),
        # the stat copy/template run on their destination first is answered on the build host, in both modes
        "host": log.count("(answered on the build host)"),
    }


def wait_for_no_process(root: str, timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = _session.processes_in_root(root)
        if not left:
            return []
        time.sleep(0.2)
    return _session.processes_in_root(root)


# -- native -----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def native_roots(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the chroot connection needs root")
    parent = tmp_path_factory.mktemp("persistent-native")
    roots = {mode: extract_rootfs(parent, f"root-{mode}") for mode in (False, True)}
    yield roots
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)


def test_native_results_match_the_plain_path(native_roots, tmp_path):
    state_dir = str(tmp_path / "state")
    plain = run_playbook(str(native_roots[False]), False, tmp_path, state_dir)
    persistent = run_playbook(str(native_roots[True]), True, tmp_path, state_dir)
    assert used_paths(plain["_log"])["persistent"] == 0
    assert used_paths(plain["_log"])["host"] == 4  # the copy (three) and template tasks' stat
    paths = used_paths(persistent["_log"])
    assert paths["started"] == 1, paths  # one server for the whole run
    assert paths["persistent"] >= 10 and paths["host"] == 4, paths
    assert paths["declined"] >= 1, paths  # the LANG task
    compare(plain, persistent)
    assert persistent["setup"]["ansible_facts"]["ansible_architecture"] == "x86_64"
    # the server followed ansible-playbook out
    assert wait_for_no_process(str(native_roots[True])) == []
    assert _forkserver.servers(state_dir)[0][1]["root"] == os.path.realpath(native_roots[True])


def test_native_detach_kills_the_server(tmp_path):
    """The image session's detach ends every process in the root, the server included, and unmounts."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    root = extract_rootfs(tmp_path, "root")
    session = _session.attach_dir(str(root), owner_pid=os.getpid(), dns=False)
    lease = _lease.path_of(session.record)
    try:
        pid = start_server_in(str(root), tmp_path)
        assert pid in _session.processes_in_root(str(root))
    finally:
        summary = _session.detach(lease)
    assert pid in summary["killed"]
    assert _session.processes_in_root(str(root)) == []
    assert _mounts.mounts_below(str(root)) == []


def start_server_in(root: str, tmp_path: Path) -> int:
    """Run one module through the connection plugin in this process (so the server outlives it); its pid."""
    import sys
    from io import StringIO

    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import connection_loader, init_plugin_loader
    from ansible.utils.collection_loader import AnsibleCollectionConfig

    if AnsibleCollectionConfig.collection_finder is None:
        # Modules imported through the plain sys.path entry carry no collection metadata; let the finder reload them.
        for name in [m for m in sys.modules if m == "ansible_collections" or m.startswith("ansible_collections.")]:
            del sys.modules[name]
        init_plugin_loader([str(REPO / ".ansible" / "collections")])
    from tests.unit.plugins.module_utils.test_forkserver import build_payload

    os.environ["PIBAKE_FORKSERVER_DIR"] = str(tmp_path / "state")
    try:
        conn = connection_loader.get("pibake.image.chroot", PlayContext(), StringIO())
        conn.set_options(var_options={"ansible_host": root, "pibake_chroot_persistent": True,
                                      "pibake_chroot_persistent_idle": 600})
        payload = build_payload("command", {"_raw_params": "true"})
        rc, out, err = conn.exec_command("/bin/sh -c '/usr/bin/python3 && sleep 0'", in_data=payload)
        assert rc == 0 and json.loads(out)["rc"] == 0, (out, err)
        found = _forkserver.servers(str(tmp_path / "state"), root=os.path.realpath(root))
        assert len(found) == 1
        return int(found[0][1]["pid"])
    finally:
        del os.environ["PIBAKE_FORKSERVER_DIR"]


# -- arm64 ------------------------------------------------------------------------------------------------------------


def arm64_base() -> str:
    cache = os.environ.get("PIBAKE_CACHE_DIR") or os.path.expanduser("~/.cache/pibake")
    found = sorted(glob.glob(os.path.join(cache, "base", "debian-trixie-arm64-*.img")), key=os.path.getmtime)
    if not found:
        pytest.skip("no cached Debian arm64 base image")
    return found[-1]


@pytest.fixture(scope="module")
def arm64_root(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    base = arm64_base()
    work = tmp_path_factory.mktemp("persistent-arm64")
    session = _session.attach_image(str(work / "copy.img"), str(work), owner_pid=os.getpid(), copy_from=base,
                                    grow_bytes=512 << 20)
    try:
        yield session.root
    finally:
        _session.detach(_lease.path_of(session.record), write_back=False, trim=False)
        os.unlink(work / "copy.img")


def test_arm64_results_match_the_plain_path(arm64_root, tmp_path):
    state_dir = str(tmp_path / "state")
    plain = run_playbook(arm64_root, False, tmp_path, state_dir, ["-e", "sfx=plain"])
    persistent = run_playbook(arm64_root, True, tmp_path, state_dir, ["-e", "sfx=persistent"])
    for results in (plain, persistent):
        for name, result in list(results.items()):
            if not name.startswith("_"):
                results[name] = json.loads(json.dumps(result).replace("-plain", "-SFX").replace("-persistent", "-SFX"))
    paths = used_paths(persistent["_log"])
    assert paths["started"] == 1 and paths["persistent"] >= 10 and paths["host"] == 4, paths
    compare(plain, persistent)
    assert persistent["setup"]["ansible_facts"]["ansible_architecture"] == "aarch64"
    print(f"\narm64 playbook: plain {plain['_seconds']:.0f} s, persistent {persistent['_seconds']:.0f} s")
    assert wait_for_no_process(arm64_root) == []


def test_arm64_apt_module(arm64_root, tmp_path):
    """apt installs python3-apt (apt-get update, install, respawn), then runs with the bindings in a forked child."""
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": {"img": {
        "ansible_connection": "pibake.image.chroot", "pibake_chroot_root": arm64_root,
        "ansible_python_interpreter": "/usr/bin/python3", "pibake_chroot_persistent": True,
    }}}}))
    playbook = tmp_path / "apt.yml"
    playbook.write_text(json.dumps([{"hosts": "img", "gather_facts": False, "tasks": [
        {"name": "Install a package that is there already (installs python3-apt first)",
         "ansible.builtin.apt": {"name": "zstd", "state": "present", "update_cache": True}, "register": "first"},
        {"name": "Again, now with the apt bindings imported in the forked child",
         "ansible.builtin.apt": {"name": ["zstd", "python3-apt"], "state": "present"}, "register": "second"},
        {"name": "Check", "ansible.builtin.assert": {"that": [
            "first is succeeded", "second is succeeded", "second is not changed"]}},
    ]}]))
    env = dict(os.environ, PIBAKE_FORKSERVER_DIR=str(tmp_path / "state"))
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "ansible-playbook"), "-i", str(inventory), str(playbook),
                           "-vvv"], cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert used_paths(proc.stdout)["persistent"] == 2, used_paths(proc.stdout)
    assert glob.glob(os.path.join(arm64_root, "usr/lib/python3/dist-packages/apt_pkg.cpython-*-aarch64-linux-gnu.so"))


def test_arm64_detach_kills_the_server(tmp_path):
    base = arm64_base()
    session = _session.attach_image(str(tmp_path / "copy.img"), str(tmp_path), owner_pid=os.getpid(), copy_from=base)
    lease = _lease.path_of(session.record)
    root = session.root
    try:
        pid = start_server_in(root, tmp_path)
        assert pid in _session.processes_in_root(root)
    finally:
        summary = _session.detach(lease, write_back=False, trim=False)
    assert pid in summary["killed"]
    assert not _mounts.is_mountpoint(root) and not os.path.exists(root)
    os.unlink(tmp_path / "copy.img")
