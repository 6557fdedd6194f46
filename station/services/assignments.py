"""Assignment service: give a host a volume from the pool, and take it back."""

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dvsan.allocation import best_fit
from dvsan.errors import Conflict, DvsanError, InsufficientCapacity, NotFound, Unavailable
from dvsan.model import Candidate
from dvsan.naming import check_iqn, check_unit_name, target_iqn, volume_wwn
from station.db import Database
from station.db.tables import (
    AssignmentRow,
    Health,
    UnitRow,
    UnitState,
    VolumeRow,
    VolumeState,
    WipeState,
)
from station.services import pool, wipes
from station.services.chap import ChapVault
from station.services.exports import ExportPusher
from station.services.tasks import TaskContext

log = logging.getLogger(__name__)


Allowed = Callable[..., bool]       # given a volume's object paths: may the caller assign it?


def free_candidates(s: Session, allowed: Allowed | None = None) -> list[Candidate]:
    """Online, clean volumes of online, healthy units that no host holds (and `allowed`, if given,
    says the caller may assign: an operator by grant, or an operator's choice of one volume).

    Clean: a released volume is not free until its unit has zeroed it (station/services/wipes.py).
    """
    q = (select(VolumeRow.id, VolumeRow.unit_name, VolumeRow.device, VolumeRow.size_bytes, VolumeRow.disk)
         .join(UnitRow, UnitRow.name == VolumeRow.unit_name)
         .outerjoin(AssignmentRow, AssignmentRow.volume_id == VolumeRow.id)
         .where(VolumeRow.state == VolumeState.ONLINE, UnitRow.state == UnitState.ONLINE,
                UnitRow.health == Health.OK, VolumeRow.wipe_state == WipeState.CLEAN,
                AssignmentRow.id.is_(None)))
    return [Candidate(vid, unit, device, size) for vid, unit, device, size, disk in s.execute(q)
            if allowed is None or allowed(f"/volumes/{vid}", f"/units/{unit}/disks/{disk}/{device}")]


def check_assignable(s: Session, volume_id: int) -> VolumeRow:
    """The volume an operator names, if it can be assigned now; NotFound or Conflict saying why."""
    v = s.get(VolumeRow, volume_id)
    if v is None:
        raise NotFound(f"no volume with id {volume_id}")
    unit = s.get_one(UnitRow, v.unit_name)
    if v.assignment is not None:
        raise Conflict(f"volume {volume_id} is assigned to host {v.assignment.host_name}")
    if v.wipe_state != WipeState.CLEAN:
        raise Conflict(f"volume {volume_id} is not wiped yet ({v.wipe_state}): it may hold a previous "
                       "host's data")
    if v.state != VolumeState.ONLINE or unit.state != UnitState.ONLINE or unit.health != Health.OK:
        raise Conflict(f"volume {volume_id} is {v.state} on unit {unit.name} ({unit.state}, {unit.health})")
    return v


def allocate(db: Database, host: str, initiator_iqn: str, host_address: str, size_bytes: int,
             vault: ChapVault | None = None, allowed: Allowed | None = None, mutual: bool = False) -> int:
    """Record a new assignment of the best-fitting free volume; returns its id.

    NOTE: the UNIQUE constraint on assignments.volume_id is what makes double allocation
    impossible, on SQLite and PostgreSQL alike; a lost race just retries with the next best fit.
    """
    check_unit_name(host)
    check_iqn(initiator_iqn)
    for attempt in range(20):
        try:
            with db.session() as s:
                free = free_candidates(s, allowed)
                c = best_fit(free, size_bytes)
                if attempt:
                    # NOTE: a lost race: every contender computed the same best fit. Spread the
                    # retries over the volumes that fit equally well (still the best size), so
                    # a storm of requests does not queue on one volume at a time.
                    c = random.choice([x for x in free if x.size_bytes == c.size_bytes])
                return new_row(s, c, host, initiator_iqn, host_address, size_bytes, vault, mutual).id
        except IntegrityError:
            continue
    raise Conflict("the pool is too busy: could not allocate after 20 attempts, try again")


def new_row(s: Session, c: Candidate, host: str, initiator_iqn: str, host_address: str, size_bytes: int,
            vault: ChapVault | None, mutual: bool, mirror_id: int | None = None) -> AssignmentRow:
    """Record the assignment of free volume `c` to a host (fresh CHAP); flushed, so a volume taken
    meanwhile raises IntegrityError here (UNIQUE volume_id)."""
    v = s.get_one(VolumeRow, c.volume_id)
    target = target_iqn(c.unit, c.device)
    row = AssignmentRow(volume_id=c.volume_id, host_name=host, initiator_iqn=initiator_iqn,
                        host_address=host_address, requested_bytes=size_bytes,
                        target_iqn=target, lun=0, mirror_id=mirror_id,
                        wwn=volume_wwn(pool.pool_id(s), c.unit, c.device, v.start_lba,
                                       v.length_blocks, v.block_size, v.uid))
    if vault is not None:
        row.chap_user, row.chap_secret_sealed = vault.new(target)
        if mutual:
            row.mutual_user, row.mutual_secret_sealed = vault.new_mutual(target)
    s.add(row)
    s.flush()
    # The export is wanted again: a drop still pending from an earlier release is void.
    pool.clear_pending_drops(s, [target])
    pool.bump_generation(s, c.unit)
    return row


def get(s: Session, assignment_id: int) -> AssignmentRow:
    row = s.get(AssignmentRow, assignment_id)
    if row is None:
        raise NotFound(f"no assignment with id {assignment_id}")
    return row


def list_all(s: Session, host: str | None = None) -> list[AssignmentRow]:
    q = select(AssignmentRow).order_by(AssignmentRow.id)
    if host:
        q = q.where(AssignmentRow.host_name == host)
    return list(s.scalars(q))


def delete(s: Session, assignment_id: int, *, wipe: bool = True) -> str:
    """Remove an assignment. Returns the unit that must drop the export.

    The volume is marked for wiping in this same transaction (`wipe`): it is not handed out again
    until its unit has zeroed it. Only the undo of an assignment whose export was never confirmed
    (its host never learnt of it) skips that. The drop is recorded as an operator's release: the
    unit removes the export even if its host is still logged in (a routine reconcile never drops
    an export under live sessions).
    """
    row = get(s, assignment_id)
    unit = row.volume.unit_name
    pool.add_pending_drop(s, unit, row.target_iqn)
    if wipe:
        wipes.mark_needed(s, row.volume)
    s.delete(row)
    s.flush()
    pool.bump_generation(s, unit)
    return unit


@dataclass(frozen=True)
class Assigned:
    """A new assignment the unit confirmed: its id, unit and target."""

    id: int
    unit: str
    target_iqn: str
    device: str


@dataclass(frozen=True)
class Released:
    """A release: the unit that held the export and whether it confirmed the drop."""

    id: int
    unit: str
    unit_confirmed: bool
    detail: str
    volume_id: int
    wipe_state: str
    wipe_task: int | None = None


async def _step(ctx: TaskContext | None, step: int, total: int, message: str) -> None:
    if ctx is not None:
        await ctx.progress(step, total, message)


async def assign(db: Database, pusher: ExportPusher, host: str, initiator_iqn: str, host_address: str,
                 size_bytes: int, ctx: TaskContext | None = None, allowed: Allowed | None = None,
                 volume_id: int | None = None, mutual: bool = False) -> Assigned:
    """Allocate the best-fitting free volume and have its unit export it to the host.

    Nothing is kept half-done: if the unit does not confirm (no answer, busy, refused), the
    assignment is taken back so the volume returns to the pool, and the unit is pushed again so it
    drops whatever part of the export it may have made. Raises Conflict (refused) or Unavailable.
    """
    if volume_id is not None:
        def named() -> int:
            with db.session() as s:
                return check_assignable(s, volume_id).size_bytes
        size_bytes = size_bytes or await asyncio.to_thread(named)
        given = allowed

        def allowed(*paths: str) -> bool:      # this volume, if the caller may assign it
            return paths[0] == f"/volumes/{volume_id}" and (given is None or given(*paths))
    await _step(ctx, 0, 2, "choosing the best-fitting free volume" if volume_id is None
                else f"taking volume {volume_id}")
    try:
        aid = await asyncio.to_thread(allocate, db, host, initiator_iqn, host_address, size_bytes,
                                      pusher.vault, allowed, mutual)
    except InsufficientCapacity as e:
        if volume_id is None:
            raise
        raise Conflict(f"volume {volume_id} cannot be assigned: it is taken, not wiped, offline, or "
                       f"smaller than {size_bytes} bytes ({e})") from e

    def load() -> Assigned:
        with db.session() as s:
            a = get(s, aid)
            return Assigned(a.id, a.volume.unit_name, a.target_iqn, a.volume.device)

    out = await asyncio.to_thread(load)
    await _step(ctx, 1, 2, f"unit {out.unit} exports {out.device} to host {host} (assignment {aid})")
    try:
        result = await pusher.push(out.unit)
        refusal = result.refused.get(out.target_iqn)
        if refusal is not None:
            raise Conflict(f"unit {out.unit} refused the export of {out.device}: {refusal}")
    except DvsanError as e:
        def undo() -> None:
            with db.session() as s:
                delete(s, aid, wipe=False)
        await asyncio.to_thread(undo)
        try:
            await pusher.push(out.unit)
        except DvsanError as again:
            log.warning("after undoing assignment %d, unit %s is not yet reconciled: %s "
                        "(it will be at its next storage report)", aid, out.unit, again)
        cls = Conflict if isinstance(e, Conflict) else Unavailable
        raise cls(f"unit {out.unit} did not confirm the export of {out.device}: {e}; "
                  "the volume was returned to the pool") from e
    log.info("assigned %s:%s to host %s (%s)", out.unit, out.device, host, initiator_iqn)
    return out


async def release(db: Database, pusher: ExportPusher, wiper: wipes.WipeService,
                  assignment_id: int, ctx: TaskContext | None = None, requested_by: str = "station") -> Released:
    """Remove an assignment, have the unit drop the export, then wipe the volume.

    The release stands even when the unit does not answer: it drops the export and the wipe is
    ordered when it next reports; `unit_confirmed` says which happened. The volume is free again
    only once its wipe has succeeded.
    """
    def remove() -> tuple[str, int]:
        with db.session() as s:
            vid = get(s, assignment_id).volume_id
            return delete(s, assignment_id), vid

    await _step(ctx, 0, 3, f"removing assignment {assignment_id}")
    unit, vid = await asyncio.to_thread(remove)
    await _step(ctx, 1, 3, f"unit {unit} drops the export")
    try:
        result = await pusher.push(unit)
    except DvsanError as e:
        return Released(assignment_id, unit, False,
                        f"released; the unit will drop the export and wipe the volume when it next "
                        f"reports ({e})", vid, WipeState.NEEDED)
    await _step(ctx, 2, 3, f"ordering the wipe of volume {vid}")
    state = await wiper.start(vid)
    follow = None
    if state in (WipeState.RUNNING, WipeState.CLEAN):
        task = await wiper.order(vid, requested_by, ordered=True)
        follow = task["id"] if task else None
    other = f" (other exports refused: {len(result.refused)})" if result.refused else ""
    return Released(assignment_id, unit, True, f"released; the unit removed the export{other}; "
                    f"wipe {state}{f' (task {follow})' if follow else ''}: the volume is free once it "
                    "is zeroed", vid, state if state in tuple(WipeState) else WipeState.NEEDED, follow)
