"""`dvsan-host-agent`: ask the station for a volume, log in to it with open-iscsi, release it.

Every command holds the state file's lock from start to end, so two at once never lose a record.
"""

import argparse
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dvsan.addresses import local_address_towards
from dvsan.errors import DvsanError, InvalidInput, NotFound
from dvsan.keyfiles import read_secret_lines
from dvsan.sizes import format_size, parse_size
from host_agent import sync
from host_agent.client import StationClient
from host_agent.detach import BlockPort, IscsiPort, detach, portals_of
from host_agent.discovery import ApiFinder
from host_agent.state import HostState

log = logging.getLogger("host_agent")
INITIATOR_FILE = Path("/etc/iscsi/initiatorname.iscsi")


def read_initiator_name(path: Path = INITIATOR_FILE) -> str:
    """The host's initiator name from open-iscsi's file ('InitiatorName=iqn....')."""
    try:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("InitiatorName="):
                return line.split("=", 1)[1].strip()
    except OSError as e:
        raise InvalidInput(f"cannot read {path}: {e.strerror}; is open-iscsi installed?") from e
    raise InvalidInput(f"{path} has no InitiatorName= line")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvsan-host-agent", description=__doc__)
    p.add_argument("--station", help="the station's REST URL, e.g. http://station:7480; with "
                   "--station-domain, the fallback when DNS gives no station")
    p.add_argument("--station-domain", metavar="DOMAIN",
                   help="find the station's REST API by the DNS SRV record _dvsan-api._tcp.DOMAIN")
    p.add_argument("--dns-server", metavar="IP[:PORT]",
                   help="the DNS server to ask (default: the system's, from /etc/resolv.conf)")
    p.add_argument("--ca-file", type=Path, help="verify the station's TLS certificate against this PEM "
                   "CA file (https:// stations; stations found by SRV are then spoken to over https)")
    p.add_argument("--token-file", type=Path, default=Path("/etc/dvsan/host.token"),
                   help="0600 file holding this host's API token, made when an operator enrolled it "
                   "(default /etc/dvsan/host.token; or env DVSAN_HOST_TOKEN)")
    p.add_argument("--name", default=socket.gethostname().split(".")[0].lower(), help="this host's name")
    p.add_argument("--state-file", type=Path, default=Path("/var/lib/dvsan-host/assignments.json"))
    p.add_argument("--json", action="store_true", help="print results as JSON")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("request", help="get a volume of at least SIZE, log in, print its block device")
    r.add_argument("size", help="e.g. 1GiB, 80GB, 512M")
    r.add_argument("--initiator-name", help="default: from /etc/iscsi/initiatorname.iscsi")
    r.add_argument("--host-address", help="this host's storage address (default: the one facing the station)")
    r.add_argument("--device-timeout", type=float, default=60.0)
    r.add_argument("--mutual-chap", action="store_true",
                   help="mutual CHAP: the unit proves itself to this host as well")
    rel = sub.add_parser("release", help="log out of a volume and give it back to the pool; refused "
                         "while its device (or anything on it) is mounted, held, swapped on or open")
    rel.add_argument("assignment", type=int)
    rel.add_argument("--force", action="store_true",
                     help="release even if the device is in use (its users lose it), and remove a "
                     "session stuck reconnecting to a dead unit")
    sub.add_parser("status", help="volumes this host holds, with their sessions")
    sy = sub.add_parser("sync", help="reconcile this host's records with the station's list, both ways")
    sy.add_argument("--login", action=argparse.BooleanOptionalAction, default=True,
                    help="log in to the assignments this host did not know (default: yes)")
    sy.add_argument("--device-timeout", type=float, default=60.0)
    return p


def main(argv: list[str] | None = None, iscsi: Any = None, block: Any = None) -> int:
    """Run one command; `iscsi` and `block` replace the iscsiadm and block device adapters
    (tests without open-iscsi or the devices)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.station and not args.station_domain:
        parser.error("give --station URL or --station-domain DOMAIN")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args, iscsi, block)
    except DvsanError as e:
        print(f"dvsan-host-agent: {e}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, iscsi: Any = None, block: Any = None) -> int:
    if iscsi is None:
        from host_agent.iscsiadm import Iscsiadm

        iscsi = Iscsiadm()
    if block is None:
        from host_agent.blockdev import BlockDevices

        block = BlockDevices()
    ca = str(args.ca_file) if args.ca_file else None
    if ca is not None and not args.ca_file.is_file():
        raise InvalidInput(f"--ca-file {ca}: no such file")
    finder = ApiFinder(args.station_domain, args.station, args.dns_server, ca_file=ca)
    state = HostState(args.state_file)
    with state.locked():
        if args.cmd == "status":
            return _status(args, state, iscsi)
        client = StationClient(finder.find(), token=host_token(args.token_file), ca_file=ca)
        if args.cmd == "request":
            return _request(args, client, state, iscsi, finder)
        if args.cmd == "release":
            return _release(args, client, state, iscsi, block)
        return _sync(args, client, state, iscsi, block, finder)


def host_token(path: Path) -> str:
    """This host's API token: DVSAN_HOST_TOKEN, else the first line of its 0600 token file."""
    env = os.environ.get("DVSAN_HOST_TOKEN", "").strip()
    if env:
        return env
    if not path.exists():
        raise InvalidInput(f"no API token: {path} does not exist (an operator enrols this host with "
                           "`dvsan-station enrol-host NAME --initiator IQN --token-file FILE` or POST "
                           "/api/v1/hosts, and puts the token there, mode 0600; or set DVSAN_HOST_TOKEN)")
    return read_secret_lines(path)[0]


def _status(args: argparse.Namespace, state: HostState, iscsi: IscsiPort) -> int:
    held = state.load()
    sessions = {(s.target_iqn, s.portal_ip) for s in iscsi.sessions()}
    out = [{**masked(a), "logged_in": any((a["target_iqn"], ip) in sessions for ip, _ in portals_of(a))}
           for a in held.values()]
    print(json.dumps(out, indent=2) if args.json else
          "\n".join(f"{a['id']}: {a['target_iqn']} @ {_portal(a)} "
                    f"{format_size(a['size_bytes'])} {a.get('device_path', '?')} "
                    f"{'logged in' if a['logged_in'] else 'NOT logged in'}" for a in out) or "no volumes")
    return 0


def _portal(held: dict[str, Any]) -> str:
    """The address this host logged in to (older state files only have the station's)."""
    return str(held.get("portal_address") or held["unit_address"])


def _request(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: Any,
             finder: ApiFinder) -> int:
    parse_size(args.size)  # refuse a bad size before bothering the station
    state.load()           # and a broken state file, before the station allocates what we cannot record
    initiator = args.initiator_name or read_initiator_name()
    address = args.host_address or local_address_towards(urlsplit(client.base_url).hostname or "127.0.0.1")
    t0 = time.monotonic()
    a = client.request_storage(args.name, initiator, address, args.size, mutual_chap=args.mutual_chap)
    t_assigned = time.monotonic()
    portal = finder.portal_address(a)
    a = {**a, "portal_address": portal}
    state.put(a)   # recorded before login, so a failed login can still be released
    iscsi.discover(portal, a["portal_port"])
    _set_chap(iscsi, a, portal, a["portal_port"])
    iscsi.login(a["target_iqn"], portal, a["portal_port"])
    dev = iscsi.wait_for_device(a["target_iqn"], portal, a["lun"], timeout=args.device_timeout)
    t_dev = time.monotonic()
    a = {**a, "device_path": dev}
    state.put(a)
    if args.json:
        print(json.dumps({**masked(a), "seconds_to_assignment": round(t_assigned - t0, 3),
                          "seconds_to_device": round(t_dev - t0, 3)}))
    else:
        print(f"volume {a['unit']}:{a['device']} ({format_size(a['size_bytes'])}, LBA {a['start_lba']}-"
              f"{a['end_lba']}) as {a['target_iqn']} lun {a['lun']} via {portal}:{a['portal_port']}")
        print(f"assignment {a['id']}: block device {dev} ready in {t_dev - t0:.2f} s")
    return 0


def _set_chap(iscsi: IscsiPort, a: dict[str, Any], portal: str, port: int) -> None:
    """The assignment's CHAP on its node record, before any login (the unit requires it); mutual
    too when the assignment has it (the host then checks the unit's answer)."""
    if a.get("chap_user") and a.get("chap_secret"):
        if a.get("mutual_user") and a.get("mutual_secret"):
            iscsi.set_chap(a["target_iqn"], portal, port, a["chap_user"], a["chap_secret"],
                           mutual=(a["mutual_user"], a["mutual_secret"]))
        else:
            iscsi.set_chap(a["target_iqn"], portal, port, a["chap_user"], a["chap_secret"])


def masked(a: dict[str, Any]) -> dict[str, Any]:
    """An assignment fit to print: its CHAP secrets stay in the 0600 state file only."""
    return {**a, **{k: "***" for k in ("chap_secret", "mutual_secret") if a.get(k)}}


def _release(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: IscsiPort,
             block: BlockPort) -> int:
    held = state.get(args.assignment)
    if held is None:
        raise InvalidInput(f"this host holds no assignment {args.assignment} (see 'status')")
    warnings = detach(held, iscsi, block, force=args.force)
    try:
        res = client.release(args.assignment)
    except NotFound:
        # NOTE: a release retried after a lost answer: the station let it go the first time.
        res = {"id": args.assignment, "unit": held.get("unit"), "unit_confirmed": None,
               "detail": "the station had already released it"}
    state.remove(args.assignment)
    res = {**res, "warnings": warnings} if warnings else res
    print(json.dumps(res) if args.json else f"released assignment {args.assignment}: {res['detail']}")
    return 0


def _sync(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: IscsiPort,
          block: BlockPort, finder: ApiFinder) -> int:
    """Both ways: add what the station has and this host lacks, drop (after logout) what it no
    longer has, add new portals beside the old ones. Applies what it can, reports the rest."""
    station = client.assignments(args.name)
    held = state.load()
    todo = sync.plan(station, held, args.name, finder.portal_address)
    report: dict[str, list[Any]] = {"added": [], "dropped": [], "new_portals": [],
                                    "problems": list(todo.conflicts)}
    for a in todo.add:
        portal = finder.portal_address(a)
        rec = {**a, "portal_address": portal}
        state.put(rec)
        report["added"].append(a["id"])
        log.info("assignment %s: the station has it, this host did not: recorded", a["id"])
        if args.login:
            try:
                iscsi.discover(portal, a["portal_port"])
                _set_chap(iscsi, a, portal, a["portal_port"])
                iscsi.login(a["target_iqn"], portal, a["portal_port"])
                dev = iscsi.wait_for_device(a["target_iqn"], portal, a["lun"], timeout=args.device_timeout)
                state.put({**rec, "device_path": dev})
            except DvsanError as e:
                report["problems"].append(f"assignment {a['id']}: recorded, but login failed: {e}")
    for rec, portals in todo.new_portals:
        known = [list(p) for p in portals_of(rec)]
        for ip, port in portals:
            try:
                iscsi.discover(ip, port)
                _set_chap(iscsi, rec, ip, port)
                iscsi.login(rec["target_iqn"], ip, port)
            except DvsanError as e:
                report["problems"].append(f"assignment {rec['id']}: new portal {ip}:{port}: {e}")
                continue
            known.append([ip, port])
            report["new_portals"].append({"id": rec["id"], "portal": f"{ip}:{port}"})
        # the first portal keeps its place in portal_address; every known one is in `portals`
        state.put({**rec, "portals": known})
    for rec in todo.drop:
        try:
            detach(rec, iscsi, block)
        except DvsanError as e:
            report["problems"].append(f"assignment {rec['id']}: the station no longer has it, "
                                      f"but it stays on this host: {e}")
            continue
        state.remove(rec["id"])
        report["dropped"].append(rec["id"])
    if args.json:
        print(json.dumps(report))
    else:
        for aid in report["added"]:
            print(f"assignment {aid}: the station had it, this host did not: added"
                  + (" and logged in" if args.login else ""))
        for p in report["new_portals"]:
            print(f"assignment {p['id']}: logged in at the new portal {p['portal']} (old ones kept)")
        for aid in report["dropped"]:
            print(f"assignment {aid}: the station no longer has it: logged out and dropped")
        for msg in report["problems"]:
            print(f"problem: {msg}", file=sys.stderr)
        if not any(report.values()):
            print("in sync: nothing to do")
    return 1 if report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
