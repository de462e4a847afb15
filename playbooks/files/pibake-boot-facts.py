#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
"""pibake boot test: wait for a booted image to settle, then describe it as one JSON document on stdout.

Run as root on the booted system by playbooks/boot-test.yml (ansible.builtin.script); the playbook asserts the
contracts on the result. Secret values never leave the machine: only their modes, sizes and sha256 digests.

  pibake-boot-facts.py [--settle-timeout S] [--firstboot-timeout S] [--data-mountpoint PATH]
"""

import argparse
import glob
import hashlib
import json
import os
import re
import subprocess
import time

FIRSTBOOT_CONFIG = "/etc/pibake/firstboot.json"
PRELOAD_MANIFEST = "/var/lib/pibake/preload/images.tsv"
RELEASE = "/etc/ourbox/release"


def sh(argv, timeout=120):
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return 127, "", str(err)
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


def read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def unit_props(unit, *names):
    dummy_rc, out, dummy_err = sh(["systemctl", "show", unit, "-p", ",".join(names)])
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def settle(timeout):
    started = time.monotonic()
    dummy_rc, out, dummy_err = sh(["systemctl", "is-system-running", "--wait"], timeout=timeout)
    dummy_rc, failed, dummy_err = sh(["systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"])
    return {
        "state": out.strip() or "timeout",
        "waited_s": round(time.monotonic() - started, 1),
        "failed_units": [line.split()[0] for line in failed.splitlines() if line.strip()],
        "multi_user_active": unit_props("multi-user.target", "ActiveState").get("ActiveState") == "active",
    }


def firstboot(timeout):
    config_text = read(FIRSTBOOT_CONFIG)
    if config_text is None:
        return {"installed": False}
    config = json.loads(config_text)
    state_dir = config.get("state_dir", "/var/lib/pibake")
    marker = os.path.join(state_dir, "firstboot", "done")
    deadline = time.monotonic() + timeout
    while True:  # normally over at once: `systemctl is-system-running --wait` waited for the boot flow
        props = unit_props("pibake-firstboot.service", "ActiveState", "SubState", "Result",
                           "ExecMainExitTimestampMonotonic")
        if props.get("ActiveState") != "activating" or time.monotonic() > deadline:
            break
        time.sleep(3)
    last = read(os.path.join(state_dir, "firstboot", "last-boot.json"))
    secrets = []
    secret_cfg = config.get("secrets", {})
    secret_dir = secret_cfg.get("dir", "secrets")
    secret_dir = secret_dir if secret_dir.startswith("/") else os.path.join(state_dir, secret_dir)
    for item in secret_cfg.get("items", []):
        path = os.path.join(secret_dir, item["name"])
        entry = {"name": item["name"], "path": path, "exists": os.path.exists(path)}
        if entry["exists"]:
            info = os.stat(path)
            with open(path, "rb") as handle:
                value = handle.read().strip()
            entry.update(mode="%04o" % (info.st_mode & 0o7777), uid=info.st_uid, size=len(value),
                         sha256=hashlib.sha256(value).hexdigest())
        secrets.append(entry)
    exit_us = int(props.get("ExecMainExitTimestampMonotonic") or 0)
    return {
        "installed": True,
        "done": os.path.exists(marker),
        "unit": props,
        "done_after_kernel_start_s": round(exit_us / 1e6, 1) if exit_us else None,
        "last_boot": json.loads(last) if last else None,
        "secrets": secrets,
    }


def identity():
    keys = {}
    for pub in sorted(glob.glob("/etc/ssh/ssh_host_*_key.pub")):
        rc, out, dummy_err = sh(["ssh-keygen", "-l", "-f", pub])
        keys[os.path.basename(pub)] = out.split()[1] if rc == 0 and out.split() else None
    private = sorted(os.path.basename(p) for p in glob.glob("/etc/ssh/ssh_host_*_key"))
    return {"machine_id": (read("/etc/machine-id") or "").strip(), "ssh_host_keys": keys,
            "ssh_host_private_keys": private}


def storage(mountpoint):
    fstab = [line for line in (read("/etc/fstab") or "").splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    entry = next((line for line in fstab if len(line.split()) > 1 and line.split()[1] == mountpoint), None)
    mounted = os.path.ismount(mountpoint)
    result = {"mountpoint": mountpoint, "fstab": entry, "mounted": mounted, "exists": os.path.isdir(mountpoint)}
    if mounted:
        dummy_rc, out, dummy_err = sh(["findmnt", "-n", "-o", "SOURCE,FSTYPE,LABEL", "--mountpoint", mountpoint])
        fields = out.split()
        result.update(source=fields[0] if fields else "", fstype=fields[1] if len(fields) > 1 else "",
                      label=fields[2] if len(fields) > 2 else "")
    elif result["exists"]:
        probe = os.path.join(mountpoint, ".pibake-boot-test-write-probe")
        try:
            with open(probe, "w", encoding="utf-8") as handle:
                handle.write("x")
            os.unlink(probe)
            result["root_can_write"] = True
        except OSError as err:
            result["root_can_write"] = False
            result["write_error"] = err.strerror
    return result


def root_fs():
    dummy_rc, source, dummy_err = sh(["findmnt", "-n", "-o", "SOURCE", "/"])
    part = os.path.basename(os.path.realpath(source.strip()))
    sysblock = os.path.realpath(os.path.join("/sys/class/block", part))
    is_partition = os.path.exists(os.path.join(sysblock, "partition"))
    disk = os.path.basename(os.path.dirname(sysblock)) if is_partition else part
    info = os.statvfs("/")

    def number(path):
        return int((read(path) or "0").strip() or 0)

    start = number(os.path.join(sysblock, "start")) if is_partition else 0
    size = number(os.path.join(sysblock, "size"))
    return {
        "source": source.strip(),
        "disk": disk,
        "disk_bytes": number(f"/sys/class/block/{disk}/size") * 512,
        "partition_end_bytes": (start + size) * 512,
        "partition_bytes": size * 512,
        "fs_bytes": info.f_blocks * info.f_frsize,
    }


def docker():
    rc, dummy_out, dummy_err = sh(["sh", "-c", "command -v docker"])
    if rc != 0:
        return {"installed": False}
    dummy_rc, swarm, dummy_err = sh(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"])
    dummy_rc, stacks, dummy_err = sh(["docker", "stack", "ls", "--format", "{{.Name}}"])
    dummy_rc, services, dummy_err = sh(["docker", "service", "ls", "--format", "{{.Name}} {{.Replicas}} {{.Image}}"])
    images = []
    for line in (read(PRELOAD_MANIFEST) or "").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 5:
            continue
        dummy_rc, image_id, dummy_err = sh(["docker", "image", "inspect", "--format", "{{.Id}}", fields[1]])
        images.append({"name": fields[1], "ref": fields[2], "expected_id": fields[4], "id": image_id.strip()})
    parsed = []
    for line in services.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            match = re.match(r"(\d+)/(\d+)", parts[1])
            parsed.append({"name": parts[0], "replicas": parts[1], "image": parts[2] if len(parts) > 2 else "",
                           "ready": bool(match) and match.group(1) == match.group(2) and match.group(2) != "0"})
    manifest = read("/etc/pibake/docker-stacks.json")
    return {"installed": True, "swarm": swarm.strip(), "stacks": stacks.split(), "services": parsed,
            "preloaded": images, "listed_stacks": [s["name"] for s in json.loads(manifest)] if manifest else []}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--settle-timeout", type=int, default=600)
    parser.add_argument("--firstboot-timeout", type=int, default=1200)
    parser.add_argument("--data-mountpoint", default="/var/lib/ourbox")
    args = parser.parse_args()
    facts = {"system": settle(args.settle_timeout)}
    facts["firstboot"] = firstboot(args.firstboot_timeout)
    facts["system"]["failed_units_after_firstboot"] = settle(60)["failed_units"]
    facts["identity"] = identity()
    facts["release"] = read(RELEASE)
    facts["storage"] = storage(args.data_mountpoint)
    facts["root"] = root_fs()
    facts["docker"] = docker()
    facts["kernel"] = os.uname().release
    print(json.dumps(facts, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
