"""Wipes: a released volume is zeroed on its unit before any other host can be given it.

The release marks the volume `needed` in the transaction that deletes its assignment, so no
crash or restart in between can hand it out unwiped (allocation takes `clean` volumes only).
Once its unit has dropped the export, the station orders WIPE (docs/protocol.md, "Wiping a
released volume"); the unit's WIPE_STATUS reports move the volume to `running`, then `clean`
(the only way back into the pool) or `failed`. A unit forgets its wipes when it restarts, so
after each storage report the station orders again every wipe of that unit not yet clean.

The state changes are plain functions on a database session (tested on a real SQLite file);
`WipeService` adds the messages and one lock per volume.
"""

import asyncio
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dvsan.errors import Conflict, DvsanError, InvalidInput, NotFound, Unavailable
from dvsan.naming import check_device
from dvsan.protocol import MsgType
from station.db import Database
from station.db.tables import UnitRow, UnitState, VolumeRow, WipeState, utcnow
from station.services import pool
from station.services.messenger import Messenger
from station.services.tasks import TaskContext, TaskService

log = logging.getLogger(__name__)

FINAL_STATES = ("succeeded", "failed", "cancelled")
METHODS = ("zeroout", "direct", "buffered")


@dataclass(frozen=True)
class WipeOrder:
    """What the station orders a unit: the WIPE body, and where to send it."""

    volume_id: int
    control: tuple[str, int]
    body: dict[str, Any]


def mark_needed(s: Session, v: VolumeRow) -> None:
    """A released volume may hold its host's bytes: it is not handed out until wiped."""
    v.wipe_state, v.wipe_id, v.wipe_detail = WipeState.NEEDED, None, None
    v.wipe_done_bytes, v.wipe_total_bytes, v.wipe_method = 0, v.length_blocks * v.block_size, None
    v.wipe_updated_at = utcnow()


def prepare(s: Session, volume_id: int) -> WipeOrder | None:
    """The WIPE order of a volume that needs one and whose unit is online, else None.

    A new wipe id is recorded before the order is sent; an order sent again (a unit restarted, or
    the station did) keeps the recorded id, so a unit still wiping answers `running` for it.
    """
    v = s.get(VolumeRow, volume_id)
    if v is None or v.wipe_state == WipeState.CLEAN or v.assignment is not None:
        return None
    unit = s.get_one(UnitRow, v.unit_name)
    if unit.state != UnitState.ONLINE:
        return None
    if v.wipe_id is None or v.wipe_state == WipeState.FAILED:
        v.wipe_id = f"v{v.id}-{secrets.token_hex(6)}"
    v.wipe_updated_at = utcnow()
    body = {"unit": v.unit_name, "pool_id": pool.pool_id(s), "device": v.device,
            "extent": pool.volume_extent(v).to_wire(), "wipe_id": v.wipe_id}
    return WipeOrder(v.id, (unit.control_host, unit.control_port), body)


def record_answer(s: Session, volume_id: int, wipe_id: str, ack: dict[str, Any]) -> str:
    """Record the unit's ACK of a WIPE; returns the volume's wipe state."""
    v = s.get(VolumeRow, volume_id)
    if v is None or v.wipe_id != wipe_id or v.wipe_state == WipeState.CLEAN:
        return "gone"
    status = ack.get("status")
    if status in ("accepted", "running"):
        running_id = ack.get("wipe_id")
        if status == "running" and isinstance(running_id, str) and running_id != wipe_id:
            # NOTE: the unit wipes this device under an earlier order of ours (a station restart
            # lost the id's last write): follow that wipe rather than start a second one.
            v.wipe_id = running_id[:64]
        v.wipe_state = WipeState.RUNNING
        v.wipe_method = str(ack.get("method", ""))[:16] or None
        v.wipe_done_bytes = _int(ack.get("done_bytes"), v.wipe_done_bytes)
        v.wipe_detail = None
    elif status == "refused":
        v.wipe_state = WipeState.FAILED
        v.wipe_detail = f"the unit refused: {ack.get('reason', 'no reason given')}"[:255]
    else:
        # a malformed-order answer or anything else: leave it needed, ordered again later
        v.wipe_detail = f"the unit answered: {ack.get('error', status)}"[:255]
    v.wipe_updated_at = utcnow()
    return v.wipe_state


def record_status(s: Session, unit: str, body: dict[str, Any]) -> str:
    """Apply a unit's WIPE_STATUS; returns what became of it ('stale' for a wipe not ours now).

    Raises InvalidInput for a malformed status (the unit gets an `error` ACK; nothing changes).
    """
    device = check_device(body.get("device"))  # type: ignore[arg-type]  # it refuses a non-str
    wipe_id, state = body.get("wipe_id"), body.get("state")
    if not isinstance(wipe_id, str) or not 0 < len(wipe_id) <= 64:
        raise InvalidInput("field 'wipe_id' must be a string of 1 to 64 characters")
    if state not in ("running", *FINAL_STATES):
        raise InvalidInput(f"field 'state' must be one of running, {', '.join(FINAL_STATES)}")
    done, total = body.get("done_bytes"), body.get("total_bytes")
    for name, n in (("done_bytes", done), ("total_bytes", total)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise InvalidInput(f"field {name!r} must be a non-negative integer")
    assert isinstance(done, int) and isinstance(total, int)
    v = s.scalars(select(VolumeRow).where(VolumeRow.unit_name == unit, VolumeRow.device == device)
                  ).one_or_none()
    if v is None or v.wipe_id != wipe_id or v.wipe_state == WipeState.CLEAN:
        return "stale"
    size = v.length_blocks * v.block_size
    method = body.get("method")
    v.wipe_method = method if method in METHODS else v.wipe_method
    v.wipe_done_bytes, v.wipe_total_bytes, v.wipe_updated_at = min(done, size), size, utcnow()
    if state == "running":
        v.wipe_state = WipeState.RUNNING
    elif state == "succeeded":
        if total != size or done != size:
            # NOTE: a unit that says it zeroed some other size did not zero this volume.
            v.wipe_state = WipeState.FAILED
            v.wipe_detail = f"the unit reported {done} of {total} bytes zeroed; the volume has {size}"
        else:
            elapsed = _float(body.get("elapsed_s"))
            v.wipe_state, v.wipe_detail = WipeState.CLEAN, f"zeroed ({v.wipe_method}) in {elapsed:.1f} s"
            log.info("volume %d (%s:%s) wiped: free again", v.id, unit, device)
    elif state == "failed":
        v.wipe_state = WipeState.FAILED
        v.wipe_detail = f"the wipe failed: {str(body.get('error', 'no reason given'))[:200]}"
        log.warning("wipe of volume %d (%s:%s) failed: %s", v.id, unit, device, v.wipe_detail)
    else:   # cancelled: the volume still holds data; ordered again at the unit's next report
        v.wipe_state, v.wipe_detail = WipeState.NEEDED, "the wipe was cancelled"
    return v.wipe_state


def unwiped(s: Session, unit: str) -> list[int]:
    """The volumes of a unit that are not clean and not assigned: each wants a (new) WIPE."""
    q = (select(VolumeRow.id).where(VolumeRow.unit_name == unit,
                                    VolumeRow.wipe_state != WipeState.CLEAN)
         .order_by(VolumeRow.id))
    return [vid for vid in s.scalars(q) if s.get_one(VolumeRow, vid).assignment is None]


@dataclass(frozen=True)
class WipeView:
    """Where a volume's wipe stands, for the task that follows it."""

    wipe_state: str
    done: int
    total: int
    method: str | None
    detail: str | None
    unit: str
    unit_state: str


def view(s: Session, volume_id: int) -> WipeView:
    v = s.get(VolumeRow, volume_id)
    if v is None:
        raise NotFound(f"no volume with id {volume_id}")
    unit = s.get_one(UnitRow, v.unit_name)
    return WipeView(v.wipe_state, v.wipe_done_bytes, v.wipe_total_bytes or v.length_blocks * v.block_size,
                    v.wipe_method, v.wipe_detail, unit.name, unit.state)


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else default


def _float(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.0


MiB = 1 << 20
FOLLOW_POLL = 10.0     # seconds: a wipe task looks again even without a report (a unit gone quiet)


class WipeService:
    """Orders wipes and follows their reports; one order in flight per volume.

    With a TaskService (`tasks`), every wipe is a task of kind `wipe` on `/volumes/ID` whose
    progress follows the unit's WIPE_STATUS reports; without one (unit tests), orders only.
    """

    def __init__(self, db: Database, messenger: Messenger, timeout: float = 15.0,
                 tasks: TaskService | None = None):
        self.db, self.messenger, self.timeout, self.tasks = db, messenger, timeout, tasks
        self._locks: dict[int, asyncio.Lock] = {}
        self._changed: dict[int, asyncio.Event] = {}

    async def _tx(self, fn: Any, *args: Any) -> Any:
        def run() -> Any:
            with self.db.session() as s:
                return fn(s, *args)
        return await asyncio.to_thread(run)

    async def start(self, volume_id: int) -> str:
        """Order the wipe of one volume (if it needs one and its unit is up); returns its state."""
        lock = self._locks.setdefault(volume_id, asyncio.Lock())
        async with lock:
            order: WipeOrder | None = await self._tx(prepare, volume_id)
            if order is None:
                return "not-ordered"
            wipe_id = order.body["wipe_id"]
            try:
                ack = await self.messenger.send(order.control, MsgType.WIPE, order.body,
                                                timeout=self.timeout)
            except DvsanError as e:
                log.warning("unit %s did not take the wipe of volume %d: %s (ordered again at its "
                            "next report)", order.body["unit"], volume_id, e)
                return "needed"
            state: str = await self._tx(record_answer, volume_id, wipe_id, ack)
            log.info("wipe %s of volume %d (%s:%s): %s", wipe_id, volume_id, order.body["unit"],
                     order.body["device"], ack.get("status"))
            return state

    async def resume(self, unit: str) -> None:
        """Order again every wipe of `unit` that is not clean (after it reported its storage)."""
        for vid in await self._tx(unwiped, unit):
            if self.tasks is None:
                await self.start(vid)
            else:
                await self.order(vid, "station")

    async def order(self, volume_id: int, requested_by: str, *, busy: str = "queue",
                    ordered: bool = False) -> dict[str, Any] | None:
        """A wipe task for the volume (the one already queued or running on it, if any).

        `ordered`: the WIPE was just sent (by a release): the task only follows it.
        `busy="refuse"`: Busy if any task holds the volume (an operator's second request).
        """
        if self.tasks is None:
            if not ordered:
                await self.start(volume_id)
            return None

        async def work(ctx: TaskContext) -> dict[str, Any]:
            return await self.run(volume_id, ctx, send=not ordered)
        return await self.tasks.submit("wipe", f"/volumes/{volume_id}", requested_by, work,
                                       busy=busy, join=busy != "refuse")

    async def run(self, volume_id: int, ctx: TaskContext, *, send: bool = True) -> dict[str, Any]:
        """The body of a wipe task: order the wipe (`send`), then follow it until it ends."""
        changed = self._changed.setdefault(volume_id, asyncio.Event())
        try:
            if send:
                await ctx.progress(0, 1, "ordering the wipe from the unit")
                state = await self.start(volume_id)
                w = await self._tx(view, volume_id)
                if state == "not-ordered" and w.wipe_state != WipeState.CLEAN:
                    raise Unavailable(f"unit {w.unit} is {w.unit_state}: the wipe of volume {volume_id} "
                                      "is ordered again when it reports")
                if state == "needed":
                    raise Unavailable(f"unit {w.unit} did not take the wipe of volume {volume_id}: it is "
                                      "ordered again at the unit's next report")
            while True:
                changed.clear()
                w = await self._tx(view, volume_id)
                await ctx.progress(w.done, w.total, f"zeroing volume {volume_id} on {w.unit}"
                                   f"{f' ({w.method})' if w.method else ''}: {w.done // MiB} of "
                                   f"{w.total // MiB} MiB")
                if w.wipe_state == WipeState.CLEAN:
                    return {"volume": volume_id, "unit": w.unit, "wipe_state": w.wipe_state,
                            "method": w.method, "detail": w.detail}
                if w.wipe_state == WipeState.FAILED:
                    raise Conflict(f"the wipe of volume {volume_id} failed: {w.detail}")
                if w.wipe_state == WipeState.NEEDED:     # cancelled on the unit, or never taken
                    raise Unavailable(f"the wipe of volume {volume_id} is not running "
                                      f"({w.detail or 'not taken by the unit'}): it is ordered again "
                                      "at the unit's next report")
                if w.unit_state != UnitState.ONLINE:
                    raise Unavailable(f"unit {w.unit} went {w.unit_state} during the wipe of volume "
                                      f"{volume_id}: it is ordered again when the unit reports")
                try:
                    await asyncio.wait_for(changed.wait(), FOLLOW_POLL)
                except TimeoutError:
                    pass
        finally:
            if self._changed.get(volume_id) is changed:
                del self._changed[volume_id]

    async def retry(self, volume_id: int, requested_by: str = "station") -> dict[str, Any] | str:
        """An operator asks again for a volume whose wipe failed (or was never ordered).

        With tasks: returns the new wipe task (Busy if another task holds the volume)."""
        def check(s: Session) -> None:
            v = s.get(VolumeRow, volume_id)
            if v is None:
                raise NotFound(f"no volume with id {volume_id}")
            if v.assignment is not None:
                raise Conflict(f"volume {volume_id} is assigned to host {v.assignment.host_name}: "
                               "release it first")
            if v.wipe_state == WipeState.CLEAN:
                raise Conflict(f"volume {volume_id} is clean: nothing to wipe")
            unit = s.get_one(UnitRow, v.unit_name)
            if unit.state != UnitState.ONLINE:
                raise Conflict(f"unit {v.unit_name} is {unit.state}: the wipe is ordered when it "
                               "is back")
        await self._tx(check)
        if self.tasks is not None:
            task = await self.order(volume_id, requested_by, busy="refuse")
            assert task is not None
            return task
        return await self.start(volume_id)

    async def status(self, unit: str, body: dict[str, Any]) -> dict[str, Any]:
        """The ACK of a unit's WIPE_STATUS: always `ok` for a well-formed one (stale ones too)."""
        def rec(s: Session) -> tuple[str, int | None]:
            state = record_status(s, unit, body)
            vid = s.scalars(select(VolumeRow.id).where(VolumeRow.unit_name == unit,
                                                       VolumeRow.device == body.get("device"))).first()
            return state, vid
        result, vid = await self._tx(rec)
        ev = self._changed.get(vid) if vid is not None else None
        if ev is not None:
            ev.set()
        return {"status": "ok", "volume": result}
