"""Units coming and going: startup, storage reports, heartbeats, shutdown, traps, silence.

Every "unit is up" or "unit is down" signal, whatever carried it (the signed UDP protocol, an
SNMP trap, the liveness check), takes one path through this service. Database work runs in
worker threads; messages to units go through the Messenger port.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Any, TypeVar

from dvsan.endpoint import Peer
from dvsan.errors import DvsanError
from dvsan.model import Partition
from dvsan.naming import check_unit_name
from dvsan.protocol import MsgType
from station.db import Database
from station.db.tables import UnitState
from station.services import disks as disk_reports
from station.services import pool
from station.services.disks import DiskReport
from station.services.exports import ExportPusher
from station.services.messenger import Messenger
from station.services.wipes import WipeService

log = logging.getLogger(__name__)
T = TypeVar("T")


class UnitService:
    """Keeps the pool in step with what units say; owns the background work that follows."""

    def __init__(self, db: Database, messenger: Messenger, pusher: ExportPusher, wipes: WipeService):
        self.db, self.messenger, self.pusher, self.wipes = db, messenger, pusher, wipes
        self._asked: dict[str, float] = {}     # unit -> when we last asked for its storage info
        self._downed: dict[str, float] = {}    # unit -> when it last went down
        self._tasks: set[asyncio.Task[Any]] = set()

    async def _tx(self, fn: Callable[..., T], *args: Any) -> T:
        def run() -> T:
            with self.db.session() as s:
                return fn(s, *args)
        return await asyncio.to_thread(run)

    def background(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()

    async def unit_started(self, unit: str, control: Peer, portal_address: str, portal_port: int = 3260,
                           dns_name: str | None = None, agent_version: str = "") -> None:
        """A unit announced itself (signed STARTUP): store it, ask for its storage info."""
        check_unit_name(unit)
        heard = time.monotonic()
        await self._tx(pool.record_startup, unit, control, portal_address, portal_port, dns_name,
                       agent_version)
        log.info("unit %s started (control %s:%d, portal %s:%d); asking for its storage info",
                 unit, control[0], control[1], portal_address, portal_port)
        self.background(self._ask_storage_info(unit, control, heard))

    async def unit_trap_up(self, unit: str) -> None:
        """An SNMP coldStart/linkUp named a known unit: ask it, at the control address the signed
        protocol gave, for its storage info. A trap never changes a unit's addresses or names
        (v2c is spoofable); the unit's signed answer is what brings it back online."""
        # NOTE: the news is as old as its arrival, not as the question it leads to: a linkDown
        # that arrives while the control address is read must still win over this coldStart.
        heard = time.monotonic()

        def control(s: Any) -> Peer:
            u = pool.get_unit(s, unit)
            return (u.control_host, u.control_port)

        peer = await self._tx(control)
        log.info("SNMP says unit %s is up; asking it for its storage info at %s:%d", unit, *peer)
        self.background(self._ask_storage_info(unit, peer, heard))

    async def unit_down(self, unit: str, state: str = UnitState.OFFLINE) -> int:
        """A unit went away (UDP SHUTDOWN, SNMP linkDown, liveness): its volumes go offline, kept."""
        self._downed[unit] = time.monotonic()
        n = await self._tx(pool.record_shutdown, unit, state)
        log.info("unit %s is %s: %d volumes offline", unit, state, n)
        return n

    async def remove(self, unit: str) -> pool.Removal:
        """An operator takes a down unit out of the pool (pool.remove_unit says when it may)."""
        out = await self._tx(pool.remove_unit, unit)
        self._downed.pop(unit, None)
        return out

    async def heartbeat(self, unit: str, health: str, detail: str | None) -> str:
        """A unit is alive: returns the state the station holds it in (it re-announces if not online)."""
        return await self._tx(pool.record_heartbeat, unit, health, detail)

    async def storage_info(self, unit: str, parts: list[Partition],
                           disks: list[DiskReport] | None = None) -> pool.PoolChange:
        """A unit's storage report: the pool follows it, then the unit is sent its exports.
        `disks`: its disks and their tables, kept for the console (None: an older unit)."""
        # NOTE: a report asked for before the unit went down (a linkDown trap or SHUTDOWN that
        # overtook it) must not bring the unit back online: only a newer request can.
        fresh = self._asked.get(unit, -1.0) >= self._downed.get(unit, -1.0)
        change = await self._tx(pool.record_storage_info, unit, parts, fresh)
        if disks is not None:
            await self._tx(disk_reports.record, unit, disks)
        log.info("pool updated from unit %s: %d online (%d new), %d missing, %d changed under an "
                 "assignment", unit, change.online, change.added, change.missing, change.changed)
        self.background(self._reconcile(unit))
        return change

    async def _reconcile(self, unit: str) -> None:
        """After a report: push the unit its exports; once it has dropped what it must, order
        again the wipes it forgot (a unit remembers none across a restart)."""
        try:
            await self.pusher.push(unit)
        except DvsanError as e:
            log.warning("could not push exports to unit %s: %s", unit, e)
            return
        await self.wipes.resume(unit)

    async def silent_units(self, older_than: datetime) -> list[str]:
        return await self._tx(pool.silent_units, older_than)

    async def _ask_storage_info(self, unit: str, peer: Peer, heard: float) -> None:
        """Ask for the storage report; `heard` is when the "unit is up" news arrived: a report
        answers it only if no "unit is down" news arrived after that."""
        self._asked[unit] = max(heard, self._asked.get(unit, heard))
        try:
            await self.messenger.send(peer, MsgType.NEED_STORAGE_INFO, {"unit": unit}, timeout=30)
        except DvsanError as e:
            log.warning("unit %s did not take NEED_STORAGE_INFO: %s", unit, e)
