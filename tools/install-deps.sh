#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
# Install the Debian packages listed in bindep.txt and make arm64 binaries runnable (qemu-user binfmt).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "pibake: run this as root (the build attaches loop devices and mounts filesystems)." >&2
  exit 1
fi
if ! command -v apt-get >/dev/null; then
  echo "pibake: this host has no apt-get; pibake's set-up supports Debian 12 (bookworm) build hosts." >&2
  exit 1
fi

mapfile -t wanted < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' bindep.txt | awk '{print $1}')
missing=()
for pkg in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "pibake: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's docker-registry package starts a registry on :5000 at install; tests start their own on 127.0.0.1.
if command -v systemctl >/dev/null && systemctl is-active -q docker-registry 2>/dev/null; then
  systemctl disable --now docker-registry >/dev/null 2>&1 || true
fi

# binfmt_misc is not mounted on a fresh machine; qemu-aarch64 must be registered with the F flag.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || {
    echo "pibake: cannot mount binfmt_misc, so arm64 programs cannot run here; use a host or privileged container that allows it." >&2
    exit 1
  }
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 || true
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || {
  echo "pibake: qemu-aarch64 could not be registered in binfmt_misc; reinstall qemu-user-static and binfmt-support." >&2
  exit 1
}
echo "pibake: host dependencies ready"
