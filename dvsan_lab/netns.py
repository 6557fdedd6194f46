"""The lab network: a netns with a bridge and one tap per guest, and a veth to the machine."""

import ipaddress
import os
import subprocess
from pathlib import Path

from dvsan_lab.errors import LabError
from dvsan_lab.topology import Topology


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"`ip {' '.join(args)}` failed: {proc.stderr.strip()}")
    return proc


def netns_exists(topo: Topology) -> bool:
    return Path("/run/netns", topo.netns).exists()


def veth_exists(topo: Topology) -> bool:
    return Path("/sys/class/net", topo.veth).exists()


def subnet_users(topo: Topology) -> list[str]:
    """Devices in the root netns other than our veth with an address in the lab subnet."""
    net = ipaddress.ip_network(f"{topo.subnet}.0/{topo.prefixlen}")
    users = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines():
        # e.g. "5: dvsanlab0    inet 10.213.77.254/24 scope global dvsanlab0\ ..."
        fields = line.split()
        dev, addr = fields[1], fields[3]
        if dev != topo.veth and ipaddress.ip_interface(addr).ip in net:
            users.append(f"{dev} ({addr})")
    return users


def up(topo: Topology) -> None:
    """Create netns, bridge, taps and veth; the caller tears down with `down` on failure."""
    ns = topo.netns
    _ip("netns", "add", ns)
    _ip("-n", ns, "link", "set", "lo", "up")
    _ip("-n", ns, "link", "add", topo.bridge, "type", "bridge")
    _ip("-n", ns, "link", "set", topo.bridge, "up")
    _ip("link", "add", topo.veth, "type", "veth", "peer", "name", topo.veth_peer, "netns", ns)
    _ip("-n", ns, "link", "set", topo.veth_peer, "master", topo.bridge, "up")
    # NOTE: no IPv6 on the machine side: nothing of the lab needs it and it would only add chatter.
    v6 = Path(f"/proc/sys/net/ipv6/conf/{topo.veth}/disable_ipv6")
    if v6.exists():
        v6.write_text("1\n")
    _ip("addr", "add", f"{topo.host_ip}/{topo.prefixlen}", "dev", topo.veth)
    _ip("link", "set", topo.veth, "up")
    for i, _ in enumerate(topo.guests):
        _ip("-n", ns, "tuntap", "add", "dev", topo.tap(i), "mode", "tap")
        _ip("-n", ns, "link", "set", topo.tap(i), "master", topo.bridge, "up")


def pids_in_netns(topo: Topology) -> list[int]:
    """Processes living in our netns: all ours, since only `up` runs things there."""
    if not netns_exists(topo):
        return []
    out = _ip("netns", "pids", topo.netns, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]


def down(topo: Topology) -> list[str]:
    """Remove the veth and the netns (which takes its bridge and taps with it); what was removed."""
    done = []
    if veth_exists(topo):
        _ip("link", "del", topo.veth)
        done.append(f"veth {topo.veth}")
    if netns_exists(topo):
        _ip("netns", "del", topo.netns)
        done.append(f"netns {topo.netns}")
    return done
