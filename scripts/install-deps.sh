#!/bin/bash
# Installs what dvsan's lab and tests need: Debian packages (only if some are missing), then the
# repo's .venv (Debian's /usr/bin/python3) with dvsan installed editable with its [lab,test] extras.
# Idempotent: safe to run again; it says what it does and skips what is already there.
set -euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
VENV="$REPO/.venv"
# NOTE: the guests run the machine's own root filesystem over 9p, so the venv must be built on the
# interpreter that exists at the same path inside them: Debian's.
PYTHON=/usr/bin/python3

PACKAGES=(
  qemu-system-x86 qemu-utils     # TCG guests (qemu-img for ad-hoc images)
  linux-image-amd64              # the guests' kernel and its /lib/modules (LIO, iscsi_tcp, 9p)
  busybox-static                 # virtme-ng builds the guests' initramfs with it
  open-iscsi                     # iscsiadm/iscsid, run inside host guests
  fdisk                          # sfdisk: partitions the unit's disk image on the machine
  kmod iproute2 procps util-linux udev bc
  iputils-ping                   # reachability checks between guests when debugging
  fio                            # benchmarks over iSCSI
  mdadm                          # host guests mirror a volume pair across two units (RAID1)
  snmp snmptrapd                 # net-snmp tools as the other side of dvsan's SNMP
  dnsmasq-base                   # a real DNS server (SRV records) for the DNS discovery tests
  libiscsi-bin                   # iscsi-inq/iscsi-ls: poke targets without the kernel initiator
  tcpdump                        # the lab checks that no secret crosses the storage network in clear
  chromium                       # the web console's browser tests (Playwright drives it)
  dbus                           # targetcli-fb (debugging by hand in guests) needs a system bus
  python3 python3-venv
)

say() { echo "install-deps: $*"; }

if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  say "all ${#PACKAGES[@]} Debian packages present, skipping apt"
else
  say "installing Debian packages: ${missing[*]}"
  "${SUDO[@]}" apt-get -o DPkg::Lock::Timeout=600 update
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${missing[@]}"
fi

if [ -x "$VENV/bin/python" ]; then
  home=$(sed -n 's/^home *= *//p' "$VENV/pyvenv.cfg" 2>/dev/null || true)
  if [ "$home" != "$(dirname "$PYTHON")" ]; then
    say "ERROR: $VENV was made from $home/python3, not $PYTHON; the guests need $PYTHON."
    say "remove it (rm -rf $VENV) and run this script again"
    exit 1
  fi
  say "virtualenv $VENV exists (from $PYTHON)"
else
  say "creating virtualenv $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi

say "installing dvsan editable with extras [lab,test] into $VENV"
"$VENV/bin/python" -m pip install --quiet -e "$REPO[lab,test]"

say "checking the lab's preflight"
if "$VENV/bin/dvsan-lab" preflight; then
  say "done: boot the lab with $VENV/bin/dvsan-lab up"
else
  say "done, but the preflight above still reports something missing"
  exit 1
fi
