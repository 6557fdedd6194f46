#!/bin/bash
# dvsan lab guest init: the vng --exec command of every guest; prepares LIO/open-iscsi, then serves exec.
# Usage (inside the guest, as root): init.sh NAME IP PREFIXLEN PORT INITIATOR_IQN HOSTS_FILE
set -u
NAME=$1 IP=$2 PREFIXLEN=$3 PORT=$4 IQN=$5 HOSTS_FILE=$6
HERE=$(dirname "$(readlink -f "$0")")

# NOTE: the guest inherits vng's environment; give commands run over exec a normal root PATH and a
# writable HOME (/root is read-only in the guest), and keep Python from trying to write .pyc files
# into the read-only checkout.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/tmp/home PYTHONDONTWRITEBYTECODE=1 LC_ALL=C.UTF-8
mkdir -p "$HOME"

log() { echo "[$NAME +$(cut -d' ' -f1 /proc/uptime)s] $*"; }
log "init start"

# NOTE: first of all, no md auto-assembly (udev's `mdadm --incremental` when a disk appears), as
# docs/operations.md asks of every dvsan machine: on a unit it assembles a host's mirror from the
# partition the unit exports (the partition is then held: never wiped, never exported again); on
# a host the host agent's sync assembles its arrays itself.
mkdir -p /etc/mdadm && echo "AUTO -all" >> /etc/mdadm/mdadm.conf

hostname "$NAME"
echo "$NAME" > /etc/hostname
# vng passes "-net none" and we add exactly one virtio-net NIC, so the first non-lo link is ours.
IF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set lo up
ip link set "$IF" up
ip addr add "$IP/$PREFIXLEN" dev "$IF"
[ -r "$HOSTS_FILE" ] && cat "$HOSTS_FILE" >> /etc/hosts

modprobe -a virtio_blk target_core_mod iscsi_target_mod target_core_iblock target_core_file iscsi_tcp \
  || log "WARNING: modprobe failed"
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
# NOTE: pip's rtslib-fb 2.2.4 refuses its dbroot unless /etc/target exists.
mkdir -p /etc/target /etc/iscsi /run/lock/iscsi
echo "InitiatorName=$IQN" > /etc/iscsi/initiatorname.iscsi
# NOTE: targetcli-fb needs a system bus; cheap to have for debugging by hand.
if command -v dbus-daemon >/dev/null; then
  mkdir -p /run/dbus && dbus-daemon --system --fork >/dev/null 2>&1 || log "WARNING: no dbus"
fi
export TARGETCLI_HOME=/tmp/targetcli-home
# NOTE: iscsid.conf's iscsid.startup uses systemctl, which the guest does not have: start it here.
iscsid || log "WARNING: iscsid did not start"
command -v udevadm >/dev/null && udevadm settle --timeout=10 2>/dev/null
# md RAID1: host guests mirror a volume pair across two units (host_agent/mdadm.py)
modprobe -a md_mod raid1 || log "WARNING: no md raid1"
mkdir -p /run/mdadm
# Anything udev assembled before the AUTO -all above took effect (the disks' drivers may load
# before this script runs): a guest has no array of its own at boot.
if grep -q '^md' /proc/mdstat 2>/dev/null; then
  log "stopping md arrays assembled at boot: $(grep '^md' /proc/mdstat | tr '\n' ' ')"
  mdadm --stop --scan || log "WARNING: mdadm --stop --scan failed"
fi

# What a machine starts at boot (systemd units on a real one): the lab writes
# <state>/shared/autostart/NAME.sh for guests that must come back by themselves after a reboot.
AUTOSTART="$(dirname "$HOSTS_FILE")/shared/autostart/$NAME.sh"
if [ -r "$AUTOSTART" ]; then
  log "autostart $AUTOSTART"
  setsid /bin/bash "$AUTOSTART" >>/tmp/autostart.log 2>&1 </dev/null &
fi

log "ready if=$IF ip=$IP/$PREFIXLEN iqn=$IQN"
exec /usr/bin/python3 "$HERE/gexec.py" serve "$IP" "$PORT"
