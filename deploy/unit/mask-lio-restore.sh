#!/bin/sh
# Part of a dvsan unit's setup: never restore a saved LIO configuration at boot (stale ACLs).
# The agent also moves /etc/target/saveconfig.json aside when it starts (unit_agent/bootsafety.py).
set -eu
for svc in rtslib-fb-targetctl.service target.service; do
  systemctl mask "$svc" 2>/dev/null || true
done
