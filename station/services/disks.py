"""Units' disks: what each unit reports of its disks, and partitioning one from the console.

A unit reports its disks in STORAGE_INFO (`disks`: each disk's table and what holds each
partition); the station keeps the latest report on the unit's row. An operator's new layout for a
disk becomes a `partition` task on `/units/UNIT/disks/DISK`: the station sends PARTITION, the unit
checks what is in the way at that moment, changes the table, reports its storage again (the pool
follows) and sends PARTITION_STATUS for each step and the end, which the task follows. A unit
that does not take the order, or never reports its end, fails the task with a clear timeout.
"""

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from dvsan.errors import Conflict, InvalidInput, NotFound, Unavailable
from dvsan.naming import check_device
from dvsan.protocol import MsgType
from station.db import Database
from station.db.tables import AssignmentRow, UnitRow, UnitState, VolumeRow
from station.services import pool
from station.services.messenger import Messenger
from station.services.tasks import TaskContext, TaskService

log = logging.getLogger(__name__)

DEVICE = r"^[a-z][a-z0-9-]{0,31}$"
MAX_DISKS = 256


class PartitionReport(BaseModel):
    """One partition of a unit's disk, as the unit reported it."""

    model_config = ConfigDict(extra="ignore")
    number: int = Field(ge=1, le=128)
    device: str = Field(pattern=DEVICE)
    start_lba: int = Field(ge=0)
    end_lba: int = Field(ge=0)
    size_bytes: int = Field(ge=0)
    type: str = Field(default="", max_length=64)
    uuid: str = Field(default="", max_length=64)
    name: str = Field(default="", max_length=72)
    in_use: list[str] = Field(default_factory=list, max_length=16)


class FreeRegion(BaseModel):
    start_lba: int = Field(ge=0)
    end_lba: int = Field(ge=0)
    size_bytes: int = Field(ge=0)


class DiskReport(BaseModel):
    """One disk of a unit: its identity, size, label and partitions (STORAGE_INFO `disks`)."""

    model_config = ConfigDict(extra="ignore")
    name: str = Field(pattern=DEVICE)
    id: str = Field(default="", max_length=128)
    size_bytes: int = Field(ge=0)
    sector_size: int = Field(ge=512, le=65536)
    label: str | None = Field(default=None, max_length=16)
    label_id: str | None = Field(default=None, max_length=64)
    system: bool = False
    system_detail: str | None = Field(default=None, max_length=255)
    in_use: list[str] = Field(default_factory=list, max_length=16)
    partitions: list[PartitionReport] = Field(default_factory=list, max_length=128)
    free: list[FreeRegion] = Field(default_factory=list, max_length=129)


def parse_reports(raw: Any) -> list[DiskReport]:
    """The `disks` of a STORAGE_INFO; InvalidInput naming the first fault."""
    if not isinstance(raw, list) or len(raw) > MAX_DISKS:
        raise InvalidInput(f"field 'disks' must be a list of at most {MAX_DISKS} disks")
    try:
        disks = [DiskReport.model_validate(d) for d in raw]
    except ValidationError as e:
        err = e.errors()[0]
        raise InvalidInput(f"field 'disks': {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    if len({d.name for d in disks}) != len(disks):
        raise InvalidInput("field 'disks' lists a disk twice")
    return disks


def record(s: Session, unit: str, disks: list[DiskReport]) -> None:
    u = s.get(UnitRow, unit)
    if u is None:
        raise NotFound(f"unit {unit!r} sent storage info before announcing itself")
    u.disks = json.dumps([d.model_dump() for d in disks], separators=(",", ":"))


def reported(s: Session, unit: str) -> list[DiskReport] | None:
    """The unit's last report of its disks; None if it never sent one (an older agent)."""
    u = pool.get_unit(s, unit)
    if u.disks is None:
        return None
    return [DiskReport.model_validate(d) for d in json.loads(u.disks)]


def view(s: Session, unit: str) -> list[dict[str, Any]]:
    """A unit's disks with, for each partition, the pool's volume and the host it is assigned to."""
    disks = reported(s, unit) or []
    vols = {v.device: v for v in s.scalars(select(VolumeRow).where(VolumeRow.unit_name == unit))}
    out = []
    for d in disks:
        dv = d.model_dump()
        for p in dv["partitions"]:
            v = vols.get(p["device"])
            p["volume_id"] = v.id if v else None
            p["assigned_to"] = v.assignment.host_name if v is not None and v.assignment else None
            if p["assigned_to"]:
                p["in_use"].append(f"assigned to host {p['assigned_to']}")
        out.append(dv)
    return out


def assigned_devices(s: Session, unit: str, disk: str) -> list[str]:
    q = (select(VolumeRow.device).join(AssignmentRow, AssignmentRow.volume_id == VolumeRow.id)
         .where(VolumeRow.unit_name == unit, VolumeRow.disk == disk))
    return sorted(s.scalars(q))


MiB = 1 << 20
ACK_TIMEOUT = 15.0          # seconds for the unit to take the order
RUN_TIMEOUT = 300.0         # ...and, once taken, to report its end


class PartitionService:
    """Partitioning tasks: order PARTITION, follow PARTITION_STATUS to the end."""

    def __init__(self, db: Database, messenger: Messenger, tasks: TaskService,
                 ack_timeout: float = ACK_TIMEOUT, run_timeout: float = RUN_TIMEOUT):
        self.db, self.messenger, self.tasks = db, messenger, tasks
        self.ack_timeout, self.run_timeout = ack_timeout, run_timeout
        self._pending: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    async def _tx(self, fn: Any, *args: Any) -> Any:
        def run() -> Any:
            with self.db.session() as s:
                return fn(s, *args)
        return await asyncio.to_thread(run)

    async def submit(self, unit: str, disk: str, layout: dict[str, Any], requested_by: str) -> dict[str, Any]:
        """The `partition` task of a new layout for `disk` (409 if another task holds the disk,
        404 for a disk the unit did not report, 503 if the unit is not online)."""
        check_device(disk)

        def check(s: Session) -> None:
            u = pool.get_unit(s, unit)
            disks = reported(s, unit)
            if disks is not None and disk not in {d.name for d in disks}:
                raise NotFound(f"unit {unit} reported no disk {disk} (it reports "
                               f"{', '.join(d.name for d in disks) or 'none'})")
            if u.state != UnitState.ONLINE:
                raise Unavailable(f"unit {unit} is {u.state}: its disks cannot be changed now")
            if disks is None:
                raise Conflict(f"unit {unit} does not report its disks (an older unit agent?)")
        await self._tx(check)

        async def work(ctx: TaskContext) -> dict[str, Any]:
            return await self.run(unit, disk, layout, ctx)
        return await self.tasks.submit("partition", f"/units/{unit}/disks/{disk}", requested_by, work,
                                       busy="refuse")

    async def run(self, unit: str, disk: str, layout: dict[str, Any], ctx: TaskContext) -> dict[str, Any]:
        def order(s: Session) -> tuple[tuple[str, int], dict[str, Any]]:
            u = pool.get_unit(s, unit)
            if u.state != UnitState.ONLINE:
                raise Unavailable(f"unit {unit} is {u.state}: its disks cannot be changed now")
            return (u.control_host, u.control_port), {"unit": unit, "pool_id": pool.pool_id(s)}
        peer, base = await self._tx(order)
        pid = f"p{secrets.token_hex(8)}"
        assigned = await self._tx(assigned_devices, unit, disk)
        body = {**base, "device": disk, "layout": layout, "partition_id": pid, "assigned": assigned}
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pending[pid] = queue
        try:
            await ctx.progress(0, 7, f"ordering the new layout of {disk} from unit {unit}")
            try:
                ack = await self.messenger.send(peer, MsgType.PARTITION, body, timeout=self.ack_timeout)
            except Unavailable as e:
                raise Unavailable(f"unit {unit} did not take the partitioning of {disk} within "
                                  f"{self.ack_timeout:.0f} s: {e}; nothing was changed") from e
            status = ack.get("status")
            if status in ("busy", "refused"):
                raise Conflict(f"unit {unit} refused to partition {disk}: {ack.get('reason', status)}")
            if status not in ("accepted", "running", "ended"):
                raise Conflict(f"unit {unit} did not take the partitioning of {disk}: "
                               f"{ack.get('error', status)}")
            deadline = time.monotonic() + self.run_timeout
            while True:
                left = deadline - time.monotonic()
                try:
                    st = await asyncio.wait_for(queue.get(), max(0.0, left))
                except TimeoutError:
                    raise Unavailable(f"unit {unit} took the partitioning of {disk} but reported no end "
                                      f"within {self.run_timeout:.0f} s: see its disks "
                                      f"(GET /api/v1/units/{unit}/disks) for the table it holds") from None
                state = st["state"]
                if state == "running":
                    await ctx.progress(st["step"], st["total_steps"], f"{disk} on {unit}: {st['message']}")
                    continue
                if state == "succeeded":
                    return {"unit": unit, "disk": disk, "created": st.get("created", []),
                            "deleted": st.get("deleted", []), "partitions": len(st.get("table", []))}
                if state == "refused":
                    raise Conflict(f"unit {unit} refused to change {disk}: {st.get('reason')}; "
                                   "the table is unchanged")
                raise Conflict(f"partitioning {disk} on unit {unit} failed: {st.get('error')}; "
                               "the old table was put back")
        finally:
            self._pending.pop(pid, None)

    async def status(self, unit: str, body: dict[str, Any]) -> dict[str, Any]:
        """The ACK of a unit's PARTITION_STATUS (`stale` for a change no task follows now)."""
        pid, state = body.get("partition_id"), body.get("state")
        if not isinstance(pid, str) or not 0 < len(pid) <= 64:
            raise InvalidInput("field 'partition_id' must be a string of 1 to 64 characters")
        if state not in ("running", "succeeded", "refused", "failed"):
            raise InvalidInput("field 'state' must be one of running, succeeded, refused, failed")
        for name in ("step", "total_steps"):
            n = body.get(name)
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise InvalidInput(f"field {name!r} must be a non-negative integer")
        if not isinstance(body.get("message", ""), str):
            raise InvalidInput("field 'message' must be a string")
        check_device(body.get("device"))  # type: ignore[arg-type]  # it refuses a non-str
        queue = self._pending.get(pid)
        if queue is None:
            log.info("unit %s: partitioning %s of %s ended %s, followed by no task (stale)", unit, pid,
                     body.get("device"), state)
            return {"status": "ok", "partition": "stale"}
        queue.put_nowait({**body, "message": str(body.get("message", ""))[:200]})
        return {"status": "ok", "partition": state}

