# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""Image session on a real (tiny) arm64 image: loops, mounts, FAT staging, guards, leases, kills."""

import os
import signal
import subprocess
import time

import pytest

from ansible_collections.pibake.image.plugins.module_utils import _lease, _loop, _mounts, _session
from ansible_collections.pibake.image.plugins.module_utils._errors import PibakeError
from tests.support import mini_image

pytestmark = pytest.mark.integration
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MTOOLS_ENV = dict(os.environ, MTOOLS_SKIP_CHECK="1")


@pytest.fixture()
def lease_dir(tmp_path, monkeypatch):
    path = tmp_path / "leases"
    monkeypatch.setenv("PIBAKE_LEASE_DIR", str(path))
    return path


@pytest.fixture()
def image(tmp_path):
    return mini_image.cached(str(tmp_path / "mini.img"))


def ours(path):
    """Loops and mounts that reference ``path`` (image or work folder)."""
    loops = [d["name"] for d in _loop.list_loops() if d["back-file"].startswith(str(path))]
    return loops, _mounts.mounts_below(str(path))


def chroot(root, command):
    return subprocess.run(["chroot", root, "/bin/sh", "-c", command], capture_output=True, text=True, check=True).stdout


def test_attach_runs_arm64_and_detach_restores_everything(image, tmp_path, lease_dir):
    session = _session.attach_image(image, str(tmp_path / "work"), grow_bytes=32 << 20, owner_pid=os.getpid())
    root = session.root
    try:
        assert chroot(root, "uname -m").strip() == "aarch64"
        assert "arm_64bit=1" in chroot(root, "cat /boot/firmware/config.txt")
        assert "192.0.2.53" not in chroot(root, "cat /etc/resolv.conf")  # the build's DNS is in place
        assert chroot(root, "/usr/sbin/policy-rc.d; echo $?").strip() == "101"
        chroot(root, "echo changed > /boot/firmware/from-build.txt; echo x > /root-marker")
        assert len(_lease.all_leases()) == 1
    finally:
        summary = _session.detach(_lease.path_of(session.record))
    assert summary["fat_rewritten"] is True
    assert ours(tmp_path) == ([], [])
    assert _lease.all_leases() == []
    # The boot file written inside the chroot is in the FAT now, and the FAT checks clean.
    out = subprocess.run(["mtype", "-i", f"{image}@@{mini_image.BOOT_START * 512}", "::/from-build.txt"],
                         capture_output=True, text=True, env=MTOOLS_ENV, check=True).stdout
    assert out.strip() == "changed"
    fat = tmp_path / "fat.bin"
    subprocess.run(["dd", f"if={image}", f"of={fat}", "bs=512", f"skip={mini_image.BOOT_START}",
                    f"count={mini_image.BOOT_SIZE}", "status=none"], check=True)
    subprocess.run(["fsck.fat", "-n", str(fat)], check=True, capture_output=True)
    table = subprocess.run(["sfdisk", "--json", image], capture_output=True, text=True, check=True).stdout
    assert '"size": ' in table
    root_offset = (mini_image.BOOT_START + mini_image.BOOT_SIZE) * 512
    part = tmp_path / "root.ext4"
    subprocess.run(["dd", f"if={image}", f"of={part}", "bs=1M", f"skip={root_offset}", "iflag=skip_bytes",
                    "conv=sparse", "status=none"], check=True)
    assert os.path.getsize(part) >= (mini_image.ROOT_SIZE * 512) + (32 << 20)
    subprocess.run(["e2fsck", "-fn", str(part)], check=True, capture_output=True)

    def debugfs(request):
        return subprocess.run(["debugfs", "-R", request, str(part)], capture_output=True, text=True).stdout

    # The image's own resolv.conf is back, policy-rc.d is gone, the build's change is kept.
    assert "192.0.2.53" in debugfs("cat /etc/resolv.conf")
    assert debugfs("cat /root-marker").strip() == "x"
    assert "File not found" in subprocess.run(["debugfs", "-R", "stat /usr/sbin/policy-rc.d", str(part)],
                                              capture_output=True, text=True).stderr


def test_unchanged_fat_is_left_byte_identical(image, tmp_path, lease_dir):
    before = subprocess.run(["sha256sum", image], capture_output=True, text=True).stdout.split()[0]
    session = _session.attach_image(image, str(tmp_path / "w"), owner_pid=os.getpid(), dns=False)
    summary = _session.detach(_lease.path_of(session.record), trim=False)
    assert summary["fat_rewritten"] is False
    assert ours(tmp_path) == ([], [])
    # policy-rc.d came and went; the ext4 root changed only in metadata, the FAT not at all.
    with open(image, "rb") as handle:
        handle.seek(mini_image.BOOT_START * 512)
        assert handle.read(512)[510:512] == b"\x55\xaa"
    assert before  # the image was readable


def test_a_dead_owner_is_reaped_and_nothing_else(image, tmp_path, lease_dir):
    sleeper = subprocess.Popen(["sleep", "60"])
    session = _session.attach_image(image, str(tmp_path / "w"), owner_pid=sleeper.pid, dns=False)
    inside = subprocess.Popen(["chroot", session.root, "/bin/sleep", "300"])
    assert _session.reap_stale() == []  # owner alive: untouched
    sleeper.kill()
    sleeper.wait()
    assert _session.reap_stale() == [session.record["id"]]
    assert inside.wait(timeout=10) != 0  # the process left in the chroot was killed
    assert ours(tmp_path) == ([], [])
    assert _lease.all_leases() == []


def test_a_process_entering_during_the_reap_is_swept_too(image, tmp_path, lease_dir):
    """A process that only sits in the root (working directory, not chroot) or arrives late still gets killed."""
    sleeper = subprocess.Popen(["sleep", "60"])
    session = _session.attach_image(image, str(tmp_path / "w"), owner_pid=sleeper.pid, dns=False)
    visitor = subprocess.Popen(["sleep", "300"], cwd=session.root)
    late = subprocess.Popen(["sh", "-c", f"sleep 0.3; exec chroot {session.root} /bin/sleep 300"])
    assert visitor.pid in _session.processes_in_root(session.root)
    sleeper.kill()
    sleeper.wait()
    assert _session.reap_stale() == [session.record["id"]]
    assert visitor.wait(timeout=10) != 0
    late.wait(timeout=10)
    assert ours(tmp_path) == ([], [])


def test_a_gpt_or_broken_image_is_refused_with_one_sentence(tmp_path, lease_dir):
    gpt = tmp_path / "gpt.img"
    with open(gpt, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(gpt)], input=b"label: gpt\n,32M\n,\n", check=True)
    with pytest.raises(PibakeError, match="GPT"):
        _session.attach_image(str(gpt), str(tmp_path / "w"), owner_pid=os.getpid())
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not a disk image" * 1000)
    with pytest.raises(PibakeError, match="partition table"):
        _session.attach_image(str(junk), str(tmp_path / "w"), owner_pid=os.getpid())
    assert _lease.all_leases() == []


def test_wrong_architecture_is_refused_and_undone(image, tmp_path, lease_dir):
    with pytest.raises(PibakeError, match="built for aarch64, not x86_64"):
        _session.attach_image(image, str(tmp_path / "w"), arch="x86_64", owner_pid=os.getpid())
    assert ours(tmp_path) == ([], [])
    assert _lease.all_leases() == []


def _run_until_inside(image, tmp_path, lease_dir):
    env = dict(os.environ, PIBAKE_LEASE_DIR=str(lease_dir), ANSIBLE_CONFIG=os.path.join(REPO, "ansible.cfg"),
               PIBAKE_BUILD_LOG=str(tmp_path / "build.log"))
    proc = subprocess.Popen(
        [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "-i", "localhost,",
         os.path.join(REPO, "tests", "integration", "playbooks", "session_sleep.yml"),
         "-e", f"test_image={image}", "-e", f"test_discard={tmp_path / 'discard'}"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    marker = f"{image}.d/root/run/pibake-test-inside"
    deadline = time.time() + 120
    while not os.path.exists(marker):
        assert proc.poll() is None, "ansible-playbook ended before reaching the chroot"
        assert time.time() < deadline, "the playbook never got inside the image"
        time.sleep(0.3)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_killing_ansible_playbook_mid_customization_leaks_nothing(image, tmp_path, lease_dir, sig):
    (tmp_path / "discard").mkdir()
    proc = _run_until_inside(image, tmp_path, lease_dir)
    assert ours(tmp_path)[1], "the image should be mounted while the playbook runs"
    os.kill(proc.pid, sig)
    proc.wait(timeout=60)
    # The lease guard notices the dead owner and reaps on its own; clean.yml is the second line of defence.
    deadline = time.time() + 30
    while (ours(tmp_path) != ([], []) or _lease.all_leases()) and time.time() < deadline:
        time.sleep(0.3)
    subprocess.run(
        [os.path.join(REPO, ".venv", "bin", "ansible-playbook"), "-i", "localhost,", "playbooks/clean.yml"],
        cwd=REPO, env=dict(os.environ, PIBAKE_LEASE_DIR=str(lease_dir)), check=True, capture_output=True,
    )
    assert ours(tmp_path) == ([], [])
    assert _lease.all_leases() == []
    assert not (tmp_path / "discard").exists()
    assert not subprocess.run(["pgrep", "-f", f"{image}.d/root"], capture_output=True).stdout


def _fill_root(image, free_mib=None):
    """Fill the image's root filesystem with a file (all of it when ``free_mib`` is None)."""
    root_offset = (mini_image.BOOT_START + mini_image.BOOT_SIZE) * 512
    part = f"{image}.root"
    subprocess.run(["dd", f"if={image}", f"of={part}", "bs=1M", f"skip={root_offset}", "iflag=skip_bytes",
                    "conv=sparse", "status=none"], check=True)
    size = (mini_image.ROOT_SIZE * 512 if free_mib is None else (mini_image.ROOT_SIZE * 512) - (free_mib << 20))
    filler = f"{image}.filler"
    with open(filler, "wb") as handle:
        handle.write(os.urandom(size))
    subprocess.run(["debugfs", "-w", "-R", f"write {filler} /filler", part], capture_output=True, check=False)
    subprocess.run(["dd", f"if={part}", f"of={image}", "bs=1M", f"seek={root_offset}", "oflag=seek_bytes",
                    "conv=notrunc,sparse", "status=none"], check=True)
    os.unlink(part)
    os.unlink(filler)


def test_copy_from_makes_the_working_copy_under_the_lease_which_outlives_detach(image, tmp_path, lease_dir):
    work = tmp_path / "build" / "x.1234"
    session = _session.attach_image(str(work / "image.img"), str(work / "mnt"), owner_pid=os.getpid(), dns=False,
                                    copy_from=image, discard_dir=str(work))
    lease = _lease.path_of(session.record)
    assert os.path.getsize(work / "image.img") == os.path.getsize(image)
    assert _lease.load(lease)["discard_dir"] == str(work)
    _session.detach(lease, trim=False)
    # Detached, but the lease still owns the working folder until the build's final reap.
    assert _lease.load(lease)["state"] == "detached" and work.is_dir()
    assert ours(tmp_path) == ([], [])
    assert _session.reap(lease) is True
    assert not work.exists() and _lease.all_leases() == []


def test_copy_from_checks_the_base_before_writing_anything(tmp_path, lease_dir):
    gpt = tmp_path / "gpt.img"
    with open(gpt, "wb") as handle:
        handle.truncate(64 << 20)
    subprocess.run(["sfdisk", "-q", str(gpt)], input=b"label: gpt\n,32M\n,\n", check=True)
    with pytest.raises(PibakeError, match="GPT"):
        _session.attach_image(str(tmp_path / "w" / "image.img"), str(tmp_path / "w" / "mnt"), owner_pid=os.getpid(),
                              copy_from=str(gpt), discard_dir=str(tmp_path / "w"))
    assert not (tmp_path / "w").exists() and _lease.all_leases() == []


def test_a_root_with_too_little_room_is_refused_and_undone(image, tmp_path, lease_dir):
    _fill_root(image, free_mib=4)
    with pytest.raises(PibakeError, match=r"has only \d+ MiB free after growing by 0 MiB, .*raise pibake_grow"):
        _session.attach_image(image, str(tmp_path / "w"), owner_pid=os.getpid(), min_free_bytes=16 << 20)
    assert ours(tmp_path) == ([], []) and _lease.all_leases() == []


def test_a_full_root_is_one_sentence_not_a_traceback(image, tmp_path, lease_dir):
    _fill_root(image)
    with pytest.raises(PibakeError, match=r"The root filesystem of .* is full; raise pibake_grow"):
        _session.attach_image(image, str(tmp_path / "w"), owner_pid=os.getpid())
    assert ours(tmp_path) == ([], []) and _lease.all_leases() == []
