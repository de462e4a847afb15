#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Copyright: (c) 2026, pibake developers
#
# Issue 9's comparison: the cubeos profile's customize work as a plain shell script with chroot commands, to time
# against the collection (bench/customize --shell runs it on a fresh attached copy of the same base image).
#
#   sudo bench/customize-shell.sh ROOT      # ROOT: a mounted arm64 image root with /proc, /sys, /dev, /run and DNS
#                                           # (what pibake.image.image_session prepares)
#
# The values are those of inventories/cubeos and the roles' defaults: the same packages in the same apt calls,
# the same configuration files (written with cat/sed, not templated), the same units enabled or disabled, the same
# folders, and the docker image preload as the docker role does it (skopeo on the host, the archive copied into the
# image) when DOCKER_PRELOAD lists "name|reference" entries (cubeos preloads none by default). It is the work, not
# the checks: no validation, no idempotence, no per-device settings. Prints one time per role and the total.
set -euo pipefail

ROOT=${1:?usage: customize-shell.sh ROOT}
[ -x "$ROOT/bin/sh" ] || { echo "$ROOT is not a mounted image root" >&2; exit 2; }
DOCKER_PRELOAD=${DOCKER_PRELOAD:-}
BOOT=$ROOT/boot/firmware

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LANG=C "$@"; }
apt_install() { in_root apt-get install -y -q --no-install-recommends -o Dpkg::Options::=--force-confold "$@" >/dev/null; }
write() { mkdir -p "$(dirname "$ROOT$1")"; cat > "$ROOT$1"; chmod "${2:-0644}" "$ROOT$1"; }

declare -A SECONDS_OF
since() { awk -v start="$1" -v now="$(date +%s.%N)" 'BEGIN { printf "%.1f", now - start }'; }
timed() { local name=$1 start; shift; start=$(date +%s.%N); "$@"; SECONDS_OF[$name]=$(since "$start"); }

base() {
    in_root apt-get update -q >/dev/null
    apt_install locales tzdata keyboard-configuration sudo openssh-server ca-certificates curl jq less htop rsync vim-tiny
    # locale, timezone, keyboard, hostname
    sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$ROOT/etc/locale.gen"
    in_root locale-gen >/dev/null
    echo 'LANG=en_US.UTF-8' > "$ROOT/etc/default/locale"
    ln -sfn /usr/share/zoneinfo/Etc/UTC "$ROOT/etc/localtime"
    echo Etc/UTC > "$ROOT/etc/timezone"
    write /etc/default/keyboard <<'EOF'
XKBMODEL="pc105"
XKBLAYOUT="us"
XKBVARIANT=""
XKBOPTIONS=""
BACKSPACE="guess"
EOF
    echo cubeos > "$ROOT/etc/hostname"
    sed -i '/^127\.0\.1\.1/d' "$ROOT/etc/hosts"; echo '127.0.1.1 cubeos' >> "$ROOT/etc/hosts"
    # admin user, key only
    in_root id cubeos >/dev/null 2>&1 || in_root useradd -m -s /bin/bash -G sudo,adm,video,plugdev cubeos
    in_root passwd -l cubeos >/dev/null
    write /etc/sudoers.d/cubeos 0440 <<< 'cubeos ALL=(ALL:ALL) NOPASSWD: ALL'
    install -d -m 0700 "$ROOT/home/cubeos/.ssh"; : > "$ROOT/home/cubeos/.ssh/authorized_keys"
    in_root chown -R cubeos:cubeos /home/cubeos/.ssh
    # ssh, sysctl, journald, watchdog
    write /etc/ssh/sshd_config.d/pibake.conf <<'EOF'
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
EOF
    in_root systemctl enable ssh.service >/dev/null 2>&1
    write /etc/sysctl.d/90-pibake.conf <<'EOF'
vm.swappiness = 10
vm.overcommit_memory = 1
net.core.somaxconn = 1024
fs.inotify.max_user_watches = 524288
fs.inotify.max_user_instances = 512
EOF
    write /etc/systemd/journald.conf.d/pibake.conf <<'EOF'
[Journal]
SystemMaxUse=100M
RuntimeMaxUse=50M
MaxRetentionSec=2week
EOF
    write /etc/systemd/system.conf.d/pibake-watchdog.conf <<'EOF'
[Manager]
RuntimeWatchdogSec=15
RebootWatchdogSec=10min
WatchdogDevice=/dev/watchdog
EOF
    # boot files
    grep -qx 'dtparam=watchdog=on' "$BOOT/config.txt" || sed -i '1i dtparam=watchdog=on' "$BOOT/config.txt"
    grep -q '^\[pi5\]' "$BOOT/config.txt" || printf '\n[pi5]\ndtparam=pciex1_gen=3\n' >> "$BOOT/config.txt"
    grep -q 'cgroup_enable=memory' "$BOOT/cmdline.txt" || sed -i '1 s/$/ cgroup_enable=memory cgroup_memory=1/' "$BOOT/cmdline.txt"
}

networking() {
    apt_install dhcpcd nftables iw rfkill hostapd dnsmasq
    in_root systemctl enable dhcpcd.service >/dev/null 2>&1
    in_root systemctl disable NetworkManager.service >/dev/null 2>&1 || true
    mkdir -p "$ROOT/etc/default"; echo 'WIFI_COUNTRY=US' > "$ROOT/etc/default/pibake-wifi-country"
    write /etc/hostapd/hostapd.conf 0600 <<'EOF'
interface=wlan0
driver=nl80211
country_code=US
hw_mode=g
channel=6
wpa=2
wpa_key_mgmt=WPA-PSK
rsn_pairwise=CCMP
EOF
    write /etc/dnsmasq.d/pibake-ap.conf <<'EOF'
interface=wlan0
bind-interfaces
port=0
dhcp-range=10.42.24.10,10.42.24.250,255.255.255.0,12h
dhcp-option=option:router,10.42.24.1
dhcp-option=option:dns-server,10.42.24.1
domain=cube
EOF
    cat >> "$ROOT/etc/dhcpcd.conf" <<'EOF'

interface wlan0
    static ip_address=10.42.24.1/24
    nohook wpa_supplicant
EOF
    write /etc/nftables.conf 0755 <<'EOF'
#!/usr/sbin/nft -f
flush ruleset
table inet pibake_nat {
  chain postrouting { type nat hook postrouting priority 100; oifname "eth0" masquerade }
}
EOF
    in_root systemctl unmask hostapd.service >/dev/null 2>&1 || true
    in_root systemctl disable hostapd.service dnsmasq.service >/dev/null 2>&1 || true
    in_root systemctl enable nftables.service >/dev/null 2>&1
}

docker() {
    apt_install docker.io docker-compose
    write /etc/docker/daemon.json <<'EOF'
{"live-restore": false, "log-driver": "json-file", "log-opts": {"max-file": "3", "max-size": "10m"}, "storage-driver": "overlay2"}
EOF
    for dir in /cubeos /cubeos/apps /cubeos/coreapps /cubeos/data /cubeos/data/pihole /cubeos/data/pihole/etc-pihole \
               /cubeos/data/pihole/etc-dnsmasq.d /cubeos/data/npm /cubeos/data/npm/data /cubeos/data/npm/letsencrypt; do
        install -d -m 0755 "$ROOT$dir"
    done
    install -d -m 0750 "$ROOT/cubeos/config" "$ROOT/cubeos/backups"
    local stack image
    for stack in pihole:pihole/pihole npm:jc21/nginx-proxy-manager hal:cubeos/hal api:cubeos/api dashboard:cubeos/dashboard; do
        image=${stack#*:}; stack=${stack%%:*}
        install -d -m 0755 "$ROOT/cubeos/coreapps/$stack"
        write "/cubeos/coreapps/$stack/docker-compose.yml" <<EOF
services:
  $stack:
    image: $image:latest
EOF
    done
    in_root usermod -aG docker cubeos
    in_root systemctl enable docker.service containerd.service >/dev/null 2>&1
    # preload: skopeo on the host, archives copied into the image, loaded by a unit at first boot
    install -d -m 0755 "$ROOT/var/lib/pibake/preload" "$ROOT/var/lib/pibake/preload/loaded"
    : > "$ROOT/var/lib/pibake/preload/images.tsv"
    local entry name ref file
    for entry in $DOCKER_PRELOAD; do
        name=${entry%%|*}; ref=${entry#*|}; file=$(echo "$name" | tr '/:' '__').tar
        skopeo copy --quiet --override-os linux --override-arch arm64 "docker://$ref" \
            "docker-archive:$ROOT/var/lib/pibake/preload/$file:$name"
        printf '%s\t%s\n' "$name" "$file" >> "$ROOT/var/lib/pibake/preload/images.tsv"
    done
    install -m 0755 "$(dirname "$0")/../roles/docker/files/pibake-docker-preload" "$ROOT/usr/local/sbin/pibake-docker-preload"
    write /etc/systemd/system/pibake-docker-preload.service <<'EOF'
[Unit]
Description=Load the preloaded docker images
After=docker.service
Requires=docker.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pibake-docker-preload /var/lib/pibake/preload
[Install]
WantedBy=multi-user.target
EOF
    in_root systemctl enable pibake-docker-preload.service >/dev/null 2>&1
}

firstboot() {
    install -d -m 0755 "$ROOT/etc/pibake" "$ROOT/var/lib/pibake"
    install -d -m 0700 "$ROOT/var/lib/pibake/secrets"
    install -m 0755 "$(dirname "$0")/../roles/firstboot/files/pibake-firstboot" "$ROOT/usr/local/sbin/pibake-firstboot"
    write /etc/pibake/firstboot.json <<'EOF'
{"state_dir": "/var/lib/pibake", "ap_credentials_file": "/var/lib/pibake/ap-credentials", "grow_root": true}
EOF
    for unit in pibake-firstboot pibake-firstboot-identity; do
        write "/etc/systemd/system/$unit.service" <<EOF
[Unit]
Description=pibake first boot ($unit)
ConditionPathExists=!/var/lib/pibake/$unit.done
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/pibake-firstboot
[Install]
WantedBy=multi-user.target
EOF
        in_root systemctl enable "$unit.service" >/dev/null 2>&1
    done
}

cleanup() {
    in_root apt-get clean
    rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/tmp/* "$ROOT"/var/tmp/* "$ROOT"/root/.bash_history
    find "$ROOT/var/log" -type f \( -name '*.gz' -o -name '*.[0-9]' \) -delete
    find "$ROOT/var/log" -type f -exec truncate -s 0 {} +
    rm -rf "$ROOT"/var/log/journal/*
    rm -f "$ROOT"/etc/ssh/ssh_host_*
    : > "$ROOT/etc/machine-id"; rm -f "$ROOT/var/lib/dbus/machine-id"
    fstrim "$ROOT" >/dev/null 2>&1 || true
}

TOTAL_START=$(date +%s.%N)
for role in base networking docker firstboot cleanup; do
    timed "$role" "$role"
    printf 'shell role %-12s %8.1f s\n' "$role" "${SECONDS_OF[$role]}"
done
printf 'shell total %19.1f s\n' "$(since "$TOTAL_START")"
