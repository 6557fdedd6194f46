"""`dvsan-host-agent`: ask the station for a volume, log in to it with open-iscsi, release it.

Every command holds the state file's lock from start to end, so two at once never lose a record.
"""

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dvsan.addresses import local_address_towards
from dvsan.errors import DvsanError, InvalidInput, NotFound
from dvsan.keyfiles import read_secret_lines
from dvsan.naming import IQN_PREFIX
from dvsan.sizes import format_size, parse_size
from host_agent import mirror, sync
from host_agent.client import StationClient
from host_agent.detach import BlockPort, IscsiPort, detach, portals_of
from host_agent.discovery import ApiFinder
from host_agent.iscsiadm import MIRROR_REPLACEMENT_TIMEOUT
from host_agent.login import log_in, set_chap
from host_agent.mdadm import md_path
from host_agent.mirror import MdPort
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
    r.add_argument("--mirrored", action="store_true",
                   help="a RAID1 mirror of two volumes on two units; prints /dev/md/dvsan-ID")
    rel = sub.add_parser("release", help="log out of a volume and give it back to the pool; refused "
                         "while its device (or anything on it) is mounted, held, swapped on or open")
    rel.add_argument("assignment", type=int, help="an assignment id; with --mirror, a mirror id")
    rel.add_argument("--mirror", action="store_true",
                     help="ID is a mirror: stop its array, log out of both members, release them")
    rel.add_argument("--force", action="store_true",
                     help="release even if the device is in use (its users lose it), and remove a "
                     "session stuck reconnecting to a dead unit")
    sub.add_parser("status", help="volumes this host holds, with their sessions")
    sy = sub.add_parser("sync", help="reconcile this host's records with the station's list, both ways")
    sy.add_argument("--login", action=argparse.BooleanOptionalAction, default=True,
                    help="log in to the assignments this host did not know (default: yes)")
    sy.add_argument("--device-timeout", type=float, default=60.0)
    sub.add_parser("report", help="report each mirror's health (clean, degraded, resyncing, failed) "
                   "to the station")
    w = sub.add_parser("watch", help="keep this host's volumes and mirrors in line: sync, then "
                       "report when anything changed or every --interval s; runs until SIGTERM")
    w.add_argument("--interval", type=float, default=10.0, help="seconds between rounds (default 10)")
    w.add_argument("--device-timeout", type=float, default=60.0)
    w.add_argument("--rounds", type=int, default=0, help=argparse.SUPPRESS)   # tests: stop after N
    return p


def main(argv: list[str] | None = None, iscsi: Any = None, block: Any = None, md: Any = None) -> int:
    """Run one command; `iscsi`, `block` and `md` replace the iscsiadm, block device and mdadm
    adapters (tests without open-iscsi, the devices or md)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.station and not args.station_domain:
        parser.error("give --station URL or --station-domain DOMAIN")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        return _dispatch(args, iscsi, block, md)
    except DvsanError as e:
        print(f"dvsan-host-agent: {e}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace, iscsi: Any = None, block: Any = None, md: Any = None) -> int:
    if iscsi is None:
        from host_agent.iscsiadm import Iscsiadm

        iscsi = Iscsiadm()
    if block is None:
        from host_agent.blockdev import BlockDevices

        block = BlockDevices()
    if md is None:
        from host_agent.mdadm import Mdadm

        md = Mdadm()
    ca = str(args.ca_file) if args.ca_file else None
    if ca is not None and not args.ca_file.is_file():
        raise InvalidInput(f"--ca-file {ca}: no such file")
    finder = ApiFinder(args.station_domain, args.station, args.dns_server, ca_file=ca)
    state = HostState(args.state_file)
    if args.cmd == "watch":
        client = StationClient(finder.find(), token=host_token(args.token_file), ca_file=ca)
        return _watch(args, client, state, iscsi, block, md, finder)
    with state.locked():
        if args.cmd == "status":
            return _status(args, state, iscsi)
        client = StationClient(finder.find(), token=host_token(args.token_file), ca_file=ca)
        if args.cmd == "request":
            if args.mirrored:
                return _request_mirror(args, client, state, iscsi, md, finder)
            return _request(args, client, state, iscsi, finder)
        if args.cmd == "release":
            if args.mirror:
                return _release_mirror(args, client, state, iscsi, block, md)
            return _release(args, client, state, iscsi, block)
        if args.cmd == "report":
            return _report(args, client, state, iscsi, md)
        return _sync(args, client, state, iscsi, block, md, finder)


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
    print(json.dumps(out, indent=2) if args.json else "\n".join(_status_line(a) for a in out) or "no volumes")
    return 0


def _status_line(a: dict[str, Any]) -> str:
    mirror_of = (f"member of mirror {a['mirror_id']} ({md_path(int(a['mirror_id']))}) "
                 if a.get("mirror_id") is not None else "")
    return (f"{a['id']}: {a['target_iqn']} @ {_portal(a)} {format_size(a['size_bytes'])} "
            f"{a.get('device_path', '?')} {mirror_of}{'logged in' if a['logged_in'] else 'NOT logged in'}")


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
    dev = log_in(iscsi, a, portal, args.device_timeout)
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


def _sync(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: Any,
          block: BlockPort, md: MdPort, finder: ApiFinder, quiet: bool = False) -> int:
    """Both ways: add what the station has and this host lacks, drop (after logout) what it no
    longer has, add new portals beside the old ones; heal each mirror's array; log out of stale
    dvsan targets this host no longer holds. Applies what it can, reports the rest."""
    report = sync_once(args, client, state, iscsi, block, md, finder)
    if args.json:
        if not quiet or _changed(report):
            print(json.dumps(report))
    else:
        for aid in report["added"]:
            print(f"assignment {aid}: the station had it, this host did not: added"
                  + (" and logged in" if args.login else ""))
        for p in report["new_portals"]:
            print(f"assignment {p['id']}: logged in at the new portal {p['portal']} (old ones kept)")
        for aid in report["logged_in"]:
            print(f"assignment {aid}: held without a session (a reboot?): logged in again")
        for m in report["mirrors"]:
            print(f"mirror {m['mirror']}: {m['action']}")
        for aid in report["dropped"]:
            print(f"assignment {aid}: the station no longer has it: logged out and dropped")
        for t in report["stale"]:
            print(f"stale target {t}: this host holds no assignment for it: logged out, record deleted")
        for msg in report["problems"]:
            print(f"problem: {msg}", file=sys.stderr)
        if not _changed(report) and not report["problems"] and not quiet:
            print("in sync: nothing to do")
    return 1 if report["problems"] else 0


def _changed(report: dict[str, list[Any]]) -> bool:
    return any(v for k, v in report.items() if k != "problems")


def sync_once(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: Any,
              block: BlockPort, md: MdPort, finder: ApiFinder) -> dict[str, list[Any]]:
    """One round of `sync`; what it did and what it left, by kind."""
    station = client.assignments(args.name)
    held = state.load()
    todo = sync.plan(station, held, args.name, finder.portal_address)
    report: dict[str, list[Any]] = {"added": [], "dropped": [], "new_portals": [], "logged_in": [],
                                    "mirrors": [], "stale": [], "problems": list(todo.conflicts)}
    for a in todo.add:
        portal = finder.portal_address(a)
        rec = {**a, "portal_address": portal}
        state.put(rec)
        report["added"].append(a["id"])
        log.info("assignment %s: the station has it, this host did not: recorded", a["id"])
        if args.login:
            try:
                dev = log_in(iscsi, a, portal, args.device_timeout, _replacement_timeout(a))
                state.put({**rec, "device_path": dev})
            except DvsanError as e:
                report["problems"].append(f"assignment {a['id']}: recorded, but login failed: {e}")
    for rec, portals in todo.new_portals:
        known = [list(p) for p in portals_of(rec)]
        for ip, port in portals:
            try:
                iscsi.discover(ip, port)
                set_chap(iscsi, rec, ip, port)
                if rec.get("mirror_id") is not None:
                    iscsi.set_replacement_timeout(rec["target_iqn"], ip, port, MIRROR_REPLACEMENT_TIMEOUT)
                iscsi.login(rec["target_iqn"], ip, port)
            except DvsanError as e:
                report["problems"].append(f"assignment {rec['id']}: new portal {ip}:{port}: {e}")
                continue
            known.append([ip, port])
            report["new_portals"].append({"id": rec["id"], "portal": f"{ip}:{port}"})
        # the first portal keeps its place in portal_address; every known one is in `portals`
        state.put({**rec, "portals": known})
    if args.login:
        _relogin_plain(args, station, state, iscsi, report)
    for rec in todo.drop:
        if rec.get("mirror_id") is not None:
            continue    # a mirror member leaves its array first: below
        try:
            detach(rec, iscsi, block)
        except DvsanError as e:
            report["problems"].append(f"assignment {rec['id']}: the station no longer has it, "
                                      f"but it stays on this host: {e}")
            continue
        state.remove(rec["id"])
        report["dropped"].append(rec["id"])
    _sync_mirrors(args, station, state, iscsi, block, md, report)
    _clean_stale(state, iscsi, block, report)
    return report


def _relogin_plain(args: argparse.Namespace, station: list[dict[str, Any]], state: HostState,
                   iscsi: Any, report: dict[str, list[Any]]) -> None:
    """Volumes this host holds (and the station agrees) with no session: after a reboot of the
    host, log in again so the block device is back (mirror members: `_sync_mirrors`)."""
    wanted = {str(a["id"]) for a in station if a.get("host") == args.name}
    for aid, rec in sorted(state.load().items()):
        if aid not in wanted or rec.get("mirror_id") is not None or aid in map(str, report["added"]):
            continue
        if mirror.member_device(iscsi, rec) is not None:
            continue
        if (e := _log_in_again(args, iscsi, state, rec, None, report)) is not None:
            report["problems"].append(f"assignment {aid}: no session, and logging in again failed: {e}")


def _log_in_again(args: argparse.Namespace, iscsi: Any, state: HostState, rec: dict[str, Any],
                  replacement_timeout: int | None, report: dict[str, list[Any]]) -> DvsanError | None:
    """Log in to a held volume that has no session; recorded and reported; the error if not."""
    try:
        dev = log_in(iscsi, rec, str(rec.get("portal_address") or rec["unit_address"]),
                     args.device_timeout, replacement_timeout)
    except DvsanError as e:
        return e
    state.put({**rec, "device_path": dev})
    report["logged_in"].append(rec["id"])
    return None


def _replacement_timeout(a: dict[str, Any]) -> int | None:
    return MIRROR_REPLACEMENT_TIMEOUT if a.get("mirror_id") is not None else None


def _sync_mirrors(args: argparse.Namespace, station: list[dict[str, Any]], state: HostState,
                  iscsi: Any, block: BlockPort, md: MdPort, report: dict[str, list[Any]]) -> None:
    """Each mirror this host holds or the station gives it: members back in, array healed."""
    held = state.load()
    wanted_ids = {str(a["id"]) for a in station if a.get("host") == args.name}
    held_mirrors = mirror.members_by_mirror(held)
    station_mirrors = mirror.members_by_mirror([a for a in station if a.get("host") == args.name])
    for mid in sorted(set(held_mirrors) | set(station_mirrors)):
        wanted = [held[str(a["id"])] for a in station_mirrors.get(mid, []) if str(a["id"]) in held]
        dropped = [r for r in held_mirrors.get(mid, []) if str(r["id"]) not in wanted_ids]
        if args.login:
            for rec in wanted:
                if mirror.member_device(iscsi, rec) is None and (e := _log_in_again(
                        args, iscsi, state, rec, MIRROR_REPLACEMENT_TIMEOUT, report)) is not None:
                    report["problems"].append(f"mirror {mid}: member {rec['id']}: login failed: {e}")
        if not args.login and not dropped and all(mirror.member_device(iscsi, r) is None for r in wanted):
            continue    # --no-login: recorded only; the array comes with the members' logins
        res = mirror.reconcile(mid, wanted, dropped, iscsi, block, md)
        report["mirrors"] += [{"mirror": mid, "action": a} for a in res.actions]
        report["problems"] += res.problems
        uuid = res.uuid or mirror.uuid_of([*wanted, *dropped])
        for rec in wanted:     # a replacement member learns the array's uuid from the others
            if uuid and rec.get("md_uuid") != uuid:
                state.put({**state.load()[str(rec["id"])], "md_uuid": uuid})
        for aid in res.detached:
            state.remove(aid)
            report["dropped"].append(int(aid) if aid.isdigit() else aid)


def _clean_stale(state: HostState, iscsi: Any, block: BlockPort, report: dict[str, list[Any]]) -> None:
    """Sessions and node records of dvsan targets this host holds no record for (a reboot after
    a release, a takeover, a replaced member): logged out and deleted unless in use."""
    held = {r["target_iqn"] for r in state.load().values()}
    found: dict[str, list[tuple[str, int]]] = {}
    for s in iscsi.sessions():
        found.setdefault(s.target_iqn, []).append((s.portal_ip, s.port))
    for n in iscsi.node_records():
        found.setdefault(n.target_iqn, []).append((n.portal_ip, n.port))
    for target, portals in sorted(found.items()):
        if target in held or not target.startswith(IQN_PREFIX + ":"):
            continue    # ours to keep, or not dvsan's at all
        first = portals[0]
        rec = {"id": f"stale {target}", "target_iqn": target, "portal_address": first[0],
               "portal_port": first[1], "portals": [list(p) for p in dict.fromkeys(portals)]}
        try:
            detach(rec, iscsi, block)
        except DvsanError as e:
            report["problems"].append(f"stale target {target} (no assignment of this host): {e}")
            continue
        report["stale"].append(target)


def _request_mirror(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: Any,
                    md: MdPort, finder: ApiFinder) -> int:
    """Two volumes on two units, both logged in (replacement timeout short), one RAID1 over them."""
    size = parse_size(args.size)
    state.load()
    initiator = args.initiator_name or read_initiator_name()
    address = args.host_address or local_address_towards(urlsplit(client.base_url).hostname or "127.0.0.1")
    t0 = time.monotonic()
    m = client.request_mirror(args.name, initiator, address, size, mutual_chap=args.mutual_chap)
    members = sorted(m.get("members") or [], key=lambda a: int(a["id"]))
    if len(members) != 2:
        raise DvsanError(f"station said: mirror {m.get('id')} has {len(members)} members, not 2")
    recs = []
    for a in members:   # recorded before login, so a failed login can still be released
        rec = {**a, "mirror_id": m["id"], "portal_address": finder.portal_address(a)}
        state.put(rec)
        recs.append(rec)
    devices = []
    try:
        for rec in recs:
            dev = log_in(iscsi, rec, rec["portal_address"], args.device_timeout, MIRROR_REPLACEMENT_TIMEOUT)
            rec["device_path"] = dev
            state.put(rec)
            devices.append(dev.removeprefix("/dev/"))
        uuid = mirror.create_array(md, int(m["id"]), devices)
    except DvsanError:
        print(f"dvsan-host-agent: mirror {m['id']} is held by this host but has no array: "
              f"`release {m['id']} --mirror` gives it back", file=sys.stderr)
        raise
    for rec in recs:
        rec["md_uuid"] = uuid
        state.put(rec)
    t_dev = time.monotonic()
    path = md_path(int(m["id"]))
    if args.json:
        print(json.dumps({**m, "members": [masked(r) for r in recs], "md_device": path, "md_uuid": uuid,
                          "seconds_to_device": round(t_dev - t0, 3)}))
    else:
        for r in recs:
            print(f"member {r['id']}: volume {r['unit']}:{r['device']} ({format_size(r['size_bytes'])}) "
                  f"as {r['target_iqn']} via {r['portal_address']}:{r['portal_port']}: {r['device_path']}")
        print(f"mirror {m['id']}: block device {path} ready in {t_dev - t0:.2f} s (initial resync running)")
    return 0


def _release_mirror(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: Any,
                    block: BlockPort, md: MdPort) -> int:
    recs = mirror.members_by_mirror(state.load()).get(args.assignment, [])
    if not recs:
        raise InvalidInput(f"this host holds no mirror {args.assignment} (see 'status')")
    warnings = mirror.take_down(args.assignment, recs, iscsi, block, md, force=args.force)
    try:
        res = client.release_mirror(args.assignment)
    except NotFound:
        # NOTE: a release retried after a lost answer: the station let it go the first time.
        res = {"id": args.assignment, "members": [], "detail": "the station had already released it"}
    for r in recs:
        state.remove(r["id"])
    res = {**res, "warnings": warnings} if warnings else res
    detail = res.get("detail") or f"members {', '.join(str(r['id']) for r in recs)} released"
    print(json.dumps(res) if args.json else f"released mirror {args.assignment}: {detail}")
    return 0


def _report(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: Any,
            md: MdPort) -> int:
    """One health report per mirror this host holds."""
    out, problems = report_once(client, state, iscsi, md, args.name)
    if args.json:
        print(json.dumps(out))
    else:
        for h in out:
            members = ", ".join(f"{aid} {st}" for aid, st in sorted(h["members"].items()))
            print(f"mirror {h['mirror']}: {h['state']} ({h['detail']}; members {members})")
        if not out:
            print("no mirrors")
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


def report_once(client: StationClient, state: HostState, iscsi: Any,
                md: MdPort, host: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Each mirror's health, sent to the station; what was sent, and what could not be.

    Only the members the station lists now are reported: a member it replaced may still be on
    its way out of the array here (its unit dead), and is no longer the station's to hear of."""
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    current = {str(a["id"]) for a in client.assignments(host) if a.get("host") == host}
    for mid, recs in mirror.members_by_mirror(state.load()).items():
        h = mirror.health(mid, recs, iscsi, md)
        h = {**h, "members": {aid: st for aid, st in h["members"].items() if aid in current}}
        if not h["members"]:
            continue            # the station gave the whole mirror back: nothing to report on
        try:
            client.report_mirror_health(mid, h["state"], h["members"], h.get("sync_percent"), h.get("detail"))
        except DvsanError as e:
            problems.append(f"mirror {mid}: health report refused: {e}")
        out.append({"mirror": mid, **h})
    return out, problems


def _watch(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: Any,
           block: BlockPort, md: MdPort, finder: ApiFinder) -> int:
    """sync, then report when anything changed or every --interval s, until SIGTERM or SIGINT.
    A failed round (station away, a step refused) is logged and the next one tries again."""
    if args.interval <= 0:
        raise InvalidInput(f"--interval must be positive, got {args.interval}")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _watch_loop(args, client, state, iscsi, block, md, finder, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watch_loop(args: argparse.Namespace, client: StationClient, state: HostState, iscsi: Any,
                block: BlockPort, md: MdPort, finder: ApiFinder, stop: threading.Event) -> int:
    args.login = True
    last: Any = None
    last_report = 0.0
    rounds = 0
    while not stop.is_set():
        try:
            with state.locked():
                _sync(args, client, state, iscsi, block, md, finder, quiet=True)
                seen = [(mid, mirror.health(mid, recs, iscsi, md))
                        for mid, recs in mirror.members_by_mirror(state.load()).items()]
                if seen != last or time.monotonic() - last_report >= args.interval:
                    _, problems = report_once(client, state, iscsi, md, args.name)
                    for p in problems:
                        log.warning("%s", p)
                    last, last_report = seen, time.monotonic()
        except DvsanError as e:
            log.warning("watch: this round failed: %s", e)
        rounds += 1
        if args.rounds and rounds >= args.rounds:
            break
        stop.wait(args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
