"""`dvsan-unit-agent`: run on a storage server; offers its partitions to the station and exports them."""

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from dvsan import __version__
from dvsan.addresses import local_address_towards
from dvsan.errors import DvsanError
from dvsan.identity import encode_public, fingerprint, load_or_create
from dvsan.keyfiles import cli_secret_refused, read_secret_lines
from dvsan.model import Export
from dvsan.naming import check_unit_name
from dvsan.reconcile import Action, CreateExport, SetInitiators
from dvsan.traps import TrapSecurity, UnitIdentity, parse_destinations
from unit_agent.agent import LioPort, UnitAgent
from unit_agent.discovery import StationFinder
from unit_agent.linkwatch import LinkWatch
from unit_agent.poolpin import PoolPin
from unit_agent.settings import UnitSettings
from unit_agent.stats import IoCounters, sampler

log = logging.getLogger("unit_agent")


# Secret options refused as values: the file option and the environment variable to use instead.
SECRET_OPTIONS = {
    "--trap-community": ("--trap-community-file", "DVSAN_UNIT_TRAP_COMMUNITY"),
    "--trap-v3-auth-key": ("--trap-v3-auth-key-file", "DVSAN_UNIT_TRAP_V3_AUTH_KEY"),
    "--trap-v3-priv-key": ("--trap-v3-priv-key-file", "DVSAN_UNIT_TRAP_V3_PRIV_KEY"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dvsan-unit-agent", description=__doc__)
    p.add_argument("--station", help="the station's protocol address HOST[:PORT] (port 7479 by default); "
                   "with --station-domain, the fallback when DNS gives no station")
    p.add_argument("--station-domain", metavar="DOMAIN",
                   help="find the station by the DNS SRV record _dvsan._udp.DOMAIN")
    p.add_argument("--dns-server", metavar="IP[:PORT]",
                   help="the DNS server to ask (default: the system's, from /etc/resolv.conf)")
    p.add_argument("--name", help="this unit's name (default: the short host name)")
    p.add_argument("--cluster-key-file", type=Path, help="the key shared with the station")
    p.add_argument("--listen-host", help="local protocol address (default 0.0.0.0)")
    p.add_argument("--listen-port", type=int, help="local protocol port (default 7478)")
    p.add_argument("--portal-address", help="iSCSI portal address (default: the address facing the station)")
    p.add_argument("--portal-port", type=int, help="iSCSI portal port (default 3260)")
    p.add_argument("--dns-name", help="a DNS name hosts may use for this unit")
    p.add_argument("--disk", dest="disks", action="append", help="offer only partitions of this disk (repeat)")
    p.add_argument("--offer", choices=["empty", "marked", "all-unmounted"],
                   help="which unmounted partitions to offer: empty (no filesystem, LVM, md or other "
                   "signature; the default), marked (GPT partition name or label starting with "
                   "--offer-mark), all-unmounted (see docs/operations.md)")
    p.add_argument("--offer-mark", metavar="PREFIX",
                   help="with --offer marked: the partition name or label prefix (default dvsan)")
    p.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats (default 10)")
    p.add_argument("--stats-interval", type=float, help="seconds between monitoring samples sent to the "
                   "station (CPU, memory, storage NIC, per-export I/O; default 10, 0: none)")
    p.add_argument("--storage-interface", help="interface to watch for link up/down "
                   "(default: the one holding the portal address)")
    p.add_argument("--no-link-watch", dest="link_watch", action="store_false", default=None,
                   help="do not watch the storage link")
    p.add_argument("--trap-destination", dest="trap_destinations", action="append", metavar="HOST[:PORT]",
                   help="send SNMP notifications (coldStart, linkUp, linkDown) here, e.g. the station and "
                   "the site's monitoring (repeat; port 162 by default)")
    p.add_argument("--trap-community-file", type=Path, metavar="FILE",
                   help="0600 file holding the SNMPv2c community of the notifications "
                   "(or env DVSAN_UNIT_TRAP_COMMUNITY)")
    p.add_argument("--trap-v3-user", metavar="NAME",
                   help="send SNMPv3 authPriv notifications (HMAC-SHA-96, AES-128) as this user instead")
    p.add_argument("--trap-v3-auth-key-file", type=Path, metavar="FILE",
                   help="0600 file holding its authentication pass phrase (or env DVSAN_UNIT_TRAP_V3_AUTH_KEY)")
    p.add_argument("--trap-v3-priv-key-file", type=Path, metavar="FILE",
                   help="0600 file holding its privacy pass phrase (or env DVSAN_UNIT_TRAP_V3_PRIV_KEY)")
    # NOTE: secrets as values would show in /proc/PID/cmdline: these exist only to say so.
    for opt in SECRET_OPTIONS:
        p.add_argument(opt, dest="refused_" + opt[2:].replace("-", "_"), help=argparse.SUPPRESS)
    p.add_argument("--snmp-engine-id", metavar="HEX", help="this unit's SNMPv3 engine ID "
                   "(default: derived from the unit name; receivers such as snmptrapd need it: createUser -e)")
    p.add_argument("--identity-key-file", type=Path, help="this unit's Ed25519 key (default STATE_DIR/unit.key, "
                   "made at first start)")
    p.add_argument("--station-key", help="the station's public key (base64; GET /api/v1/enrolment/station-key)")
    p.add_argument("--station-key-file", type=Path,
                   help="file holding the station's public key (the station's DATA_DIR/station_identity.pub)")
    p.add_argument("--station-trust", choices=["pinned", "first-contact"],
                   help="without a station key: refuse to start (pinned, default) or pin the key of the "
                   "first station that answers (first-contact; see docs/security.md)")
    p.add_argument("--show-key", action="store_true",
                   help="print this unit's public key and fingerprint (making the key if needed) and exit")
    p.add_argument("--rotate-key", action="store_true",
                   help="make a new key, keeping the old one to sign for it at the next start, and exit")
    p.add_argument("--inventory", action="store_true", help="print the partitions this unit would offer and exit")
    p.add_argument("--state-dir", type=Path, help="local state (default /var/lib/dvsan-unit): the pinned pool")
    p.add_argument("--forget-pool", action="store_true",
                   help="forget which pool (station database) this unit belongs to, so that another "
                   "station may take it over; its exports stay until that station says otherwise")
    p.add_argument("--no-wipe-zeroout", dest="wipe_zeroout", action="store_const", const=False,
                   help="wipe released volumes by writing zeros, never by the disk's own write-zeroes")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for opt, (file_opt, env) in SECRET_OPTIONS.items():
        if getattr(args, "refused_" + opt[2:].replace("-", "_")) is not None:
            print(f"dvsan-unit-agent: {cli_secret_refused(opt, file_opt, env)}", file=sys.stderr)
            return 2
    secrets: dict[str, str] = {}
    try:
        for opt, (file_opt, _env) in SECRET_OPTIONS.items():
            path = getattr(args, file_opt[2:].replace("-", "_"))
            if path is not None:
                secrets[opt[2:].replace("-", "_")] = read_secret_lines(path)[0]
    except DvsanError as e:
        print(f"dvsan-unit-agent: {e}", file=sys.stderr)
        return 2
    not_settings = {"inventory", "forget_pool", "show_key", "rotate_key",
                    *(f[2:].replace("-", "_") for f, _env in SECRET_OPTIONS.values())}
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k not in not_settings and not k.startswith("refused_")}
    overrides.update(secrets)
    try:
        settings = UnitSettings(**overrides)
        check_unit_name(settings.name)
    except (ValidationError, DvsanError) as e:
        print(f"dvsan-unit-agent: bad setting: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from unit_agent.inventory import blkid_probe, scan

    keep: list[Callable[[], frozenset[str]]] = [frozenset]   # set once the agent and its LIO exist

    def inventory() -> list:  # type: ignore[type-arg]
        return scan(settings.sysfs_root, settings.disks or None, probe=blkid_probe,
                    offer=settings.offer, keep=keep[0](), mark=settings.offer_mark).offered

    if args.forget_pool:
        pin_file = settings.state_dir / "pool.json"
        try:
            pin_file.unlink()
            print(f"forgot the pool pinned in {pin_file}; the next station to push exports takes this unit")
        except FileNotFoundError:
            print(f"no pool pinned in {pin_file}")
        return 0
    if args.inventory:
        try:
            # partitions the pool took stay offered whatever they hold (the running agent also
            # keeps what LIO exports now; this command does not open LIO)
            owned = PoolPin(settings.state_dir / "pool.json").owned
            inv = scan(settings.sysfs_root, settings.disks or None, probe=blkid_probe, offer=settings.offer,
                       keep=owned, mark=settings.offer_mark)
        except (DvsanError, OSError) as e:
            print(f"dvsan-unit-agent: {e}", file=sys.stderr)
            return 2
        for p in inv.offered:
            print(f"offer {p.device:10} start {p.start_lba:>12} length {p.length_blocks:>12} "
                  f"end {p.end_lba:>12} block {p.block_size} size {p.size_bytes} uid {p.uid or '-'}")
        for dev, why in sorted(inv.excluded.items()):
            print(f"skip  {dev:10} {why}")
        return 0
    if args.show_key or args.rotate_key:
        return _key_command(settings, rotate=args.rotate_key)
    try:
        key = settings.load_cluster_key()
        signer = settings.load_signer()
        station_pin = settings.load_station_pin()
        finder = StationFinder(settings.station_domain, settings.station or None, settings.dns_server)
        traps = _trap_config(settings)
    except DvsanError as e:
        print(f"dvsan-unit-agent: {e}", file=sys.stderr)
        return 2
    log.info("unit %s: looking for the station: %s", settings.name, finder.describe())
    try:
        # NOTE: waits here (DNS errors are logged and retried with backoff, never fatal) because
        # the portal address defaults to the local address that faces the station. SIGTERM while
        # waiting ends the agent cleanly: it holds nothing yet and has no station to tell.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        station = finder.wait()[0]
        portal = settings.portal_address or local_address_towards(station[0], station[1])
    except DvsanError as e:
        print(f"dvsan-unit-agent: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    from unit_agent.bootsafety import disable_autosave
    from unit_agent.lio import Lio

    try:
        disable_autosave(Path(settings.sysfs_root))
    except DvsanError as e:
        print(f"dvsan-unit-agent: {e}", file=sys.stderr)
        return 2
    try:
        pin = PoolPin(settings.state_dir / "pool.json")
        lio_adapter = Lio(settings.name, portal, settings.portal_port)
        lio = OwningLio(lio_adapter, pin)
    except DvsanError as e:
        print(f"dvsan-unit-agent: {e}", file=sys.stderr)
        return 2
    keep[0] = lio.keep
    agent = UnitAgent(settings.name, key, station, portal, settings.portal_port, lio, inventory,
                      settings.dns_name, signer=signer, station_pin=station_pin)
    agent.wiper.use_zeroout = settings.wipe_zeroout
    from unit_agent.partition import Partitioner
    # the disks it reports and may partition on the station's order: those of --disk, else all
    agent.partitioner = Partitioner.of_agent(agent, settings.disks or None, settings.sysfs_root)
    agent.pin = pin
    log.info("unit %s: key %s%s", settings.name, fingerprint(signer.key),
             " (rotating: the old key signs for it until the station takes it)" if signer.previous else "")
    agent.find_stations = finder.find   # every (re-)announcement asks DNS afresh

    if traps is not None:
        from unit_agent.snmp import TrapSender

        destinations, security, engine_id = traps
        agent.notifier = TrapSender(destinations, security, lambda: _identity(agent, settings), engine_id,
                                    interface=settings.storage_interface, source_host=settings.listen_host)
        log.info("unit %s: SNMP notifications to %s", agent.name, agent.notifier.describe())
    return asyncio.run(_run(agent, settings, lio_adapter))


class OwningLio:
    """The LIO adapter, remembering in the pool pin every partition the pool has exported.

    Those partitions hold hosts' data (filesystems, LVM, md: signatures), so the inventory must
    keep offering them under every offer policy, also after a reboot has emptied LIO: `keep()`
    is what LIO held after the last change, plus the pin's `owned` (partition uids, or device
    names of partitions without one). NOTE: `keep()` never waits for LIO's lock, so an inventory
    taken while a change hangs on a dead disk still answers.
    """

    def __init__(self, lio: LioPort, pin: PoolPin):
        self.lio = lio
        self.pin = pin
        self._held: frozenset[str] = frozenset(e.device for e in lio.actual_exports())

    def keep(self) -> frozenset[str]:
        """Devices and partition uids the inventory offers whatever they hold."""
        return self._held | self.pin.owned

    def actual_exports(self) -> list[Export]:
        exports = self.lio.actual_exports()
        self._held = frozenset(e.device for e in exports)
        return exports

    def sessions(self, target_iqn: str) -> int:
        return self.lio.sessions(target_iqn)

    def apply(self, actions: Sequence[Action]) -> None:
        """Apply, then remember what now stands (also after a partial failure)."""
        try:
            self.lio.apply(actions)
        except BaseException:
            try:
                self._remember(actions)
            except DvsanError as e:
                log.error("cannot remember the pool's partitions: %s", e)
            raise
        self._remember(actions)

    def _remember(self, actions: Sequence[Action]) -> None:
        held = {e.target_iqn for e in self.actual_exports()}
        names = {a.export.extent.uid if a.export.extent is not None and a.export.extent.uid
                 else a.export.device
                 for a in actions if isinstance(a, (CreateExport, SetInitiators)) and a.export.target_iqn in held}
        if names:
            self.pin.own(names)


async def _run(agent: UnitAgent, settings: UnitSettings, io: IoCounters | None = None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await agent.open(settings.listen_host, settings.listen_port)
    log.info("unit %s: portal %s:%d, announcing to station %s:%d", agent.name, agent.portal_address,
             agent.portal_port, *agent.station)
    agent.reannounce()
    notifier = agent.notifier
    if notifier is not None:
        await _notify(notifier.send_cold_start())
    heartbeat = asyncio.ensure_future(agent.heartbeat(settings.heartbeat_interval))
    watch = await _start_link_watch(agent, settings)
    reporter = None
    if settings.stats_interval > 0:
        nic = watch.ifname if watch is not None else settings.storage_interface
        if nic is None:
            from unit_agent.linkwatch import interface_of
            try:
                nic = await asyncio.to_thread(interface_of, agent.portal_address)
            except (LookupError, OSError, RuntimeError):
                nic = None      # every interface but loopback is counted
        reporter = asyncio.ensure_future(agent.report_stats(settings.stats_interval,
                                                            sampler(agent.name, io, nic)))
    if notifier is not None and watch is not None:
        notifier.interface = watch.ifname
    await stop.wait()
    heartbeat.cancel()
    if reporter is not None:
        reporter.cancel()
    if watch is not None:
        watch.stop()
    log.info("unit %s: stopping; telling the station (exports stay in the kernel)", agent.name)
    if notifier is not None:
        await _notify(notifier.send_link_down(shutdown=True))
    acked = await agent.shutdown()
    if notifier is not None:
        await notifier.aclose()
    log.info("unit %s: stopped (station %s)", agent.name, "acknowledged" if acked else "did not answer")
    return 0


def _key_command(settings: UnitSettings, rotate: bool) -> int:
    """--show-key / --rotate-key: print what an operator checks before approving this unit."""
    try:
        if rotate:
            old, new = settings.rotate_key()
            print(f"unit {settings.name}: new key {new} (old {old} signs for it at the next start)")
        key, _ = load_or_create(settings.key_path)
    except (DvsanError, OSError) as e:
        print(f"dvsan-unit-agent: {e}", file=sys.stderr)
        return 2
    print(f"unit {settings.name}\npublic key {encode_public(key)}\nfingerprint {fingerprint(key)}")
    return 0


def _trap_config(settings: UnitSettings) -> "tuple[list[tuple[str, int]], TrapSecurity, bytes] | None":
    """Destinations, security and engine ID of the SNMP notifications; None when none are wanted."""
    if not settings.trap_destinations:
        if settings.trap_community or settings.trap_v3_user:
            log.warning("SNMP credentials given but no --trap-destination: no notifications are sent")
        return None
    return parse_destinations(settings.trap_destinations), settings.trap_security(), settings.engine_id()


def _identity(agent: UnitAgent, settings: UnitSettings) -> UnitIdentity:
    """What the notifications say about this unit, as it is now (the control port once bound)."""
    port = agent.endpoint.address[1] if agent.endpoint is not None else settings.listen_port
    return UnitIdentity(agent.name, agent.portal_address, agent.portal_port, port, __version__, agent.dns_name)


async def _notify(sending: "Awaitable[int]") -> None:
    """Send a notification; one that reaches nobody is logged, never fatal."""
    try:
        await sending
    except DvsanError as e:
        log.warning("SNMP notification not sent: %s", e)


async def _start_link_watch(agent: UnitAgent, settings: UnitSettings) -> "LinkWatch | None":
    """Watch the storage link over netlink; a failure to start is logged, not fatal."""
    if not settings.link_watch:
        return None
    from unit_agent.linkwatch import LinkWatch, interface_of

    try:
        # NOTE: pyroute2's synchronous IPRoute runs its own event loop: never on ours.
        ifname = settings.storage_interface
        if not ifname:
            ifname = await asyncio.to_thread(interface_of, agent.portal_address)
    except (LookupError, OSError, RuntimeError) as e:
        log.warning("not watching the storage link: %s", e)
        return None
    watch = LinkWatch(ifname, agent.on_link_change)
    watch.start()
    return watch


if __name__ == "__main__":
    sys.exit(main())
