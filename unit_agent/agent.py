"""The unit agent's protocol loop: announce, answer storage-info requests, apply desired exports."""

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from dvsan import __version__, secretbox
from dvsan.endpoint import Endpoint, Peer
from dvsan.errors import AdapterError, Conflict, DvsanError, InvalidInput, Unavailable
from dvsan.identity import STATION, Signer, StationPin
from dvsan.model import Export, Partition
from dvsan.naming import target_iqn
from dvsan.protocol import Message, MsgType
from dvsan.reconcile import Action, plan
from unit_agent.partition import Partitioner
from unit_agent.poolpin import PoolPin, check_pool_fields
from unit_agent.wipe import Wiper

log = logging.getLogger(__name__)


class LioPort(Protocol):
    """What the agent needs from the LIO adapter (unit_agent.lio.Lio)."""

    def actual_exports(self) -> list[Export]: ...
    def apply(self, actions: Sequence[Action]) -> None: ...
    def sessions(self, target_iqn: str) -> int: ...


class Busy(Unavailable):
    """An earlier change to LIO is still running (a hung disk?): try again later."""


class UnitAgent:
    """One unit's agent: owns its UDP endpoint and, through `lio`, the unit's LIO configuration."""

    def __init__(self, name: str, key: bytes, station: Peer, portal_address: str, portal_port: int,
                 lio: LioPort, inventory: Callable[[], list[Partition]], dns_name: str | None = None,
                 *, signer: Signer | None = None, station_pin: StationPin | None = None):
        # signer: this unit's own key, enrolled at the station; station_pin: the station's key.
        # NOTE: both or neither: a unit that signs but takes unsigned EXPORTS would obey any peer.
        if (signer is None) != (station_pin is None):
            raise ValueError("a unit agent needs both its own key and the station's, or neither")
        self.signer, self.station_pin = signer, station_pin
        self.name = name
        self.key = key
        # CHAP secrets come sealed in EXPORTS under a key derived from the cluster key
        self.chap_key = secretbox.derive(key, secretbox.CHAP_WIRE)
        self.station = station
        self.portal_address = portal_address
        self.portal_port = portal_port
        self.dns_name = dns_name
        self.lio = lio
        self.inventory = inventory
        self.endpoint: Endpoint | None = None
        self.announced = asyncio.Event()
        # DNS discovery (unit_agent.discovery.StationFinder.find): the stations to try, in order,
        # asked afresh at each announcement; None means only `station`.
        self.find_stations: Callable[[], Awaitable[list[Peer]]] | None = None
        self.announce_timeout = 30.0     # seconds to wait for the only station
        self.failover_timeout = 10.0     # ...or for each of several, before trying the next
        self.exports_applied = 0
        self._apply_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._announcing: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Optional SNMP notifier (unit_agent.snmp): send_link_up() / send_link_down()
        self.notifier: Any = None
        # Which pool's EXPORTS this unit obeys (unit_agent.poolpin); in memory unless set.
        self.pin = PoolPin(None)
        # Bounded waits: a push waits this long for an earlier one, and a configfs change this
        # long, before the station hears "busy" and this unit reports itself degraded.
        self.busy_wait = 5.0
        self.apply_timeout = 60.0
        self.health: tuple[str, str | None] = ("ok", None)
        # Zeroes released volumes on the station's order (WIPE, WIPE_CANCEL; unit_agent/wipe.py).
        self.wiper = Wiper.of_agent(self)
        # Changes the partition tables of its disks on the station's order (PARTITION;
        # unit_agent/partition.py) and reports them in STORAGE_INFO `disks`; None: neither.
        self.partitioner: Partitioner | None = None

    async def open(self, host: str, port: int) -> None:
        self._loop = asyncio.get_running_loop()
        self.endpoint = await Endpoint.open(self.key, self.handle, host, port, name=f"unit {self.name}",
                                            signer=self.signer, verifier=self.station_pin,
                                            recipient=lambda _body: STATION)

    def _spawn(self, coro: Any) -> "asyncio.Task[Any]":
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def reannounce(self) -> None:
        """Start announcing again (after a link came back, or when the station lost track of us)."""
        if self._announcing is None or self._announcing.done():
            self.announced.clear()
            self._announcing = self._spawn(self.announce())

    async def heartbeat(self, interval: float) -> None:
        """Tell the station every `interval` seconds that we are alive; re-announce if it forgot us.

        The station marks a unit unreachable when heartbeats stop (its liveness timeout).
        """
        assert self.endpoint is not None
        warned = False
        while True:
            await asyncio.sleep(interval)
            if not self.announced.is_set():
                continue
            try:
                health, detail = self.health
                ack = await self.endpoint.send(self.station, MsgType.HEARTBEAT,
                                               {"unit": self.name, "health": health,
                                                "health_detail": detail},
                                               timeout=max(1.0, interval))
                warned = False
            except Unavailable as e:
                if not warned:
                    log.warning("heartbeat not acknowledged: %s", e)
                    warned = True
                continue
            state = ack.get("state")
            if ack.get("status") == "ok" and state != "online":
                log.info("the station holds this unit as %s: announcing again", state)
                self.reannounce()

    async def report_stats(self, interval: float, sample: Callable[[], list[dict[str, Any]]]) -> None:
        """Send a monitoring sample (STATS: dvsan/stats.py) every `interval` seconds once announced.

        The sample is taken in a thread (configfs and /proc reads). One the station does not
        acknowledge is not sent again: the next carries newer totals, and the station computes
        rates from whatever pairs of samples it got.
        """
        assert self.endpoint is not None
        warned = False
        while True:
            await asyncio.sleep(interval)
            if not self.announced.is_set():
                continue
            try:
                bodies = await asyncio.to_thread(sample)
                for body in bodies:
                    ack = await self.endpoint.send(self.station, MsgType.STATS, body,
                                                   timeout=max(1.0, min(interval, 10.0)))
                    if ack.get("status") != "ok" or ack.get("refused"):
                        log.warning("stats: the station refused (part of) our sample: %s",
                                    ack.get("error") or ack.get("refused"))
                warned = False
            except (Unavailable, AdapterError, OSError) as e:
                if not warned:
                    log.warning("stats not delivered: %s", e)
                    warned = True

    def on_link_change(self, ifname: str, change: str) -> None:
        """Called from the link-watch thread: traps, and a fresh announcement when the link is back."""
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(lambda: self._spawn(self._link_changed(ifname, change)))

    async def _link_changed(self, ifname: str, change: str) -> None:
        if self.notifier is not None:
            fn = getattr(self.notifier, "send_link_up" if change == "up" else "send_link_down", None)
            if fn is not None:
                try:
                    res = fn()
                    if inspect.isawaitable(res):
                        await res
                except Exception as e:  # noqa: BLE001 - a trap that fails must not stop the agent
                    log.warning("link%s trap for %s failed: %s", change.capitalize(), ifname, e)
        if change == "up":
            self.reannounce()

    def _identity(self) -> dict[str, Any]:
        return {"unit": self.name, "portal_address": self.portal_address, "portal_port": self.portal_port,
                "dns_name": self.dns_name, "agent_version": __version__}

    async def announce(self) -> None:
        """Send STARTUP until a station acknowledges it (the station may come up later).

        With `find_stations` set, each round tries the stations it gives in turn: the first to
        acknowledge becomes `self.station`; on no answer from one, the next is tried.
        """
        assert self.endpoint is not None
        while True:
            stations = await self.find_stations() if self.find_stations else [self.station]
            timeout = self.announce_timeout if len(stations) == 1 else self.failover_timeout
            refused = False
            for station in stations:
                try:
                    ack = await self.endpoint.send(station, MsgType.STARTUP, self._identity(),
                                                   timeout=timeout, max_rto=5.0)
                except Unavailable as e:
                    log.warning("station %s:%d does not answer (%s); %s", *station, e,
                                "still trying" if len(stations) == 1 else "trying the next")
                    continue
                if ack.get("status") == "ok":
                    self.station = station
                    log.info("station %s:%d acknowledged our startup", *station)
                    self.announced.set()
                    return
                log.error("station %s:%d refused our startup: %s", *station, ack.get("error"))
                refused = True
            if refused:
                await asyncio.sleep(10)

    async def shutdown(self, timeout: float = 5.0) -> bool:
        """Tell the station we are going down; True if it acknowledged in time."""
        assert self.endpoint is not None
        try:
            ack = await self.endpoint.send(self.station, MsgType.SHUTDOWN, {"unit": self.name},
                                           timeout=timeout)
            return ack.get("status") == "ok"
        except Unavailable as e:
            log.warning("station did not acknowledge our shutdown: %s", e)
            return False
        finally:
            self.wiper.stop()
            if self.partitioner is not None:
                self.partitioner.stop()
            for t in list(self._tasks):
                t.cancel()
            if self._announcing is not None:
                self._announcing.cancel()
            self.endpoint.close()

    async def handle(self, msg: Message, peer: Peer) -> dict[str, Any] | None:
        if msg.type == MsgType.NEED_STORAGE_INFO:
            self._spawn(self.send_storage_info(peer))
            return {}
        if msg.type == MsgType.EXPORTS:
            try:
                return await self.apply_exports(msg.body)
            except Busy as e:
                # NOTE: a status of its own, so the station tells "try later" from a refusal.
                return {"status": "busy", "busy": True, "error": str(e)}
        if msg.type in (MsgType.WIPE, MsgType.WIPE_CANCEL):
            return await self.wiper.handle(msg.type, msg.body)
        if msg.type == MsgType.PARTITION and self.partitioner is not None:
            return await self.partitioner.handle(msg.type, msg.body)
        raise InvalidInput(f"a unit does not take {msg.type.name} messages")

    async def send_storage_info(self, peer: Peer) -> None:
        assert self.endpoint is not None
        parts = await asyncio.to_thread(self.inventory)
        body: dict[str, Any] = {"unit": self.name, "partitions": [p.to_wire() for p in parts]}
        if self.partitioner is not None:
            try:
                body["disks"] = await asyncio.to_thread(self.partitioner.report)
            except DvsanError as e:
                log.warning("storage info goes without its disks: %s", e)
        try:
            ack = await self.endpoint.send(peer, MsgType.STORAGE_INFO, body, timeout=30)
            log.info("storage info (%d partitions) taken by the station: %s", len(parts), ack)
        except Unavailable as e:
            log.warning("station did not take our storage info: %s", e)

    async def apply_exports(self, body: dict[str, Any]) -> dict[str, Any]:
        """Make LIO hold the exports the station sent, as far as each can be applied.

        The whole message is refused (nothing changes) if it is addressed to another unit, comes
        from another pool or an older generation, or is malformed. Each export is then checked on
        its own against this unit's naming and the kernel's view of the device (offered, same
        extent and identity); a refused one is reported in the answer with its reason and the
        others are applied. An export this unit holds but the station no longer lists is removed
        only if no initiator is logged in, or if the station names it in `drop` (an operator's
        release): a bulk diff never pulls a volume from under a live host.
        """
        if body.get("unit") != self.name:
            raise Conflict(f"exports for unit {body.get('unit')!r} sent to unit {self.name!r}")
        pool_id, generation = check_pool_fields(body)
        raw, drop = body.get("exports"), body.get("drop", [])
        if not isinstance(raw, list):
            raise InvalidInput("field 'exports' must be a list")
        if not isinstance(drop, list) or not all(isinstance(t, str) for t in drop):
            raise InvalidInput("field 'drop' must be a list of target names")
        self.pin.admit(pool_id, generation)
        offered = {p.device: p for p in await asyncio.to_thread(self.inventory)}
        desired: list[Export] = []
        refused: dict[str, str] = {}
        unsafe: set[str] = set()          # targets that must not stay on what the device is now
        for i, item in enumerate(raw):
            try:
                e = Export.from_wire(item, self.chap_key)
            except InvalidInput as err:
                name = item.get("target_iqn") if isinstance(item, dict) else None
                refused[name if isinstance(name, str) else f"#{i}"] = f"malformed export: {err}"
                continue
            why, moved = self._refusal(e, offered)
            if why is None:
                desired.append(e)
            else:
                refused[e.target_iqn] = why
                if moved:
                    unsafe.add(e.target_iqn)
        try:
            await asyncio.wait_for(self._apply_lock.acquire(), self.busy_wait)
        except TimeoutError:
            raise Busy(f"unit {self.name} is busy: {self.health[1] or 'an earlier change is still running'}"
                       ) from None
        released_here = True
        try:
            actual = await asyncio.to_thread(self.lio.actual_exports)
            wanted = {e.target_iqn for e in desired}
            kept: dict[str, str] = {}
            for a in actual:
                if a.target_iqn in wanted or a.target_iqn in unsafe:
                    continue
                if a.target_iqn in refused:
                    # Refused for a reason that says nothing of its extent (device gone): left as is.
                    kept[a.target_iqn] = "left as it is"
                    desired.append(a)
                    continue
                if a.target_iqn in drop:
                    continue
                n = await asyncio.to_thread(self.lio.sessions, a.target_iqn)
                if n:
                    kept[a.target_iqn] = (f"{n} initiator(s) logged in: not removed without an "
                                          "operator's release")
                    log.warning("keeping export %s: %s", a.target_iqn, kept[a.target_iqn])
                    desired.append(a)
            actions = plan(desired, actual)
            # NOTE: apply even an empty plan: the adapter then also removes half-made leftovers.
            task = asyncio.ensure_future(asyncio.to_thread(self.lio.apply, actions))
            try:
                await asyncio.wait_for(asyncio.shield(task), self.apply_timeout)
            except TimeoutError:
                # The kernel write cannot be interrupted: the lock stays held until it returns.
                released_here = False
                self.health = ("degraded", (f"a change of {len(actions)} LIO operation(s) has run for "
                               f"over {self.apply_timeout:.0f} s (a hung disk?)"))
                log.error("unit %s: %s", self.name, self.health[1])
                task.add_done_callback(self._stuck_apply_ended)
                raise Busy(f"unit {self.name} is busy: {self.health[1]}") from None
            except ExceptionGroup as eg:
                raise AdapterError("; ".join(str(e) for e in eg.exceptions)) from eg
            if actions:
                log.info("applied %d change(s); %d export(s) now held", len(actions), len(desired))
            for target, why in refused.items():
                log.warning("refused export %s: %s", target, why)
            self.exports_applied += 1
        finally:
            if released_here:
                self._apply_lock.release()
        return {"exports": len(desired), "changes": len(actions),
                "refused": [{"target_iqn": t, "reason": r} for t, r in sorted(refused.items())],
                "kept": [{"target_iqn": t, "reason": r} for t, r in sorted(kept.items())]}

    def _refusal(self, e: Export, offered: dict[str, Partition]) -> tuple[str | None, bool]:
        """Why this unit must not hold export `e` (None if it may), and whether the reason is
        that the device is now another extent (then an export of it must not stay either)."""
        if e.target_iqn != target_iqn(self.name, e.device):
            return f"target {e.target_iqn} does not follow this unit's naming", False
        p = offered.get(e.device)
        if p is None:
            return f"device {e.device} is not offered by this unit (in use, mounted or gone)", False
        if e.extent is None:
            return "the export carries no extent to check the device against", False
        why = e.extent.mismatch(p.extent)
        if why is not None:
            return f"device {e.device}: {why}", True
        return None, False

    def _stuck_apply_ended(self, task: "asyncio.Future[None]") -> None:
        self._apply_lock.release()
        self.health = ("ok", None)
        exc = task.exception() if not task.cancelled() else None
        log.warning("unit %s: the stuck LIO change ended%s", self.name, f" with an error: {exc}" if exc else "")
