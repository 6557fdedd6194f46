"""Mirrors (issue 8): a volume pair on two units as one mirrored assignment, its health as its host
reports it, the replacement of a failed member, and a host takeover with fencing.

A mirror's members are ordinary assignments (their own target, CHAP, export and release path)
that share a `mirror_id`; the host builds a RAID1 over them (host_agent/mdadm.py). The station
never puts two members on one unit. Every sequence here is a task's body (station/services/tasks.py)
and leaves nothing half-done that a re-run or a unit's next report does not finish:

- create: both exports confirmed by their units, or the whole mirror is undone (both volumes back
  in the pool, unwiped: their host never learnt of them);
- replace: the new member is exported and confirmed first, then the old one is released like any
  release (pending drop, wipe: a unit that is down drops and wipes when it next reports, so a stale
  member is never exported again); a re-run after a kill finds the new member and only releases;
- takeover: every assignment of the failed host is fenced (withheld, its target dropped even
  under live sessions) and each unit must confirm; only then are they moved to the spare host
  with fresh CHAP secrets. A re-run continues where it stopped.
"""

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dvsan.allocation import best_fit, best_pair
from dvsan.errors import (
    Conflict,
    DvsanError,
    InsufficientCapacity,
    InvalidInput,
    NotFound,
    Unavailable,
)
from dvsan.naming import check_iqn, check_unit_name
from station.db import Database
from station.db.tables import (
    AssignmentRow,
    ExportState,
    MemberState,
    MirrorRow,
    MirrorState,
    UnitState,
    utcnow,
)
from station.services import assignments, auth, pool, wipes
from station.services.assignments import Allowed
from station.services.chap import ChapVault
from station.services.exports import ExportPusher
from station.services.tasks import TaskContext

log = logging.getLogger(__name__)

FAILED_MEMBER = (MemberState.FAULTY, MemberState.MISSING)
ATTEMPTS = 20


@dataclass(frozen=True)
class Member:
    """One member as a push confirms it: its assignment, unit, target and device."""

    id: int
    unit: str
    target_iqn: str
    device: str


def get(s: Session, mirror_id: int) -> MirrorRow:
    m = s.get(MirrorRow, mirror_id)
    if m is None:
        raise NotFound(f"no mirror with id {mirror_id}")
    return m


def list_all(s: Session, host: str | None = None) -> list[MirrorRow]:
    q = select(MirrorRow).order_by(MirrorRow.id)
    if host:
        q = q.where(MirrorRow.host_name == host)
    return list(s.scalars(q))


def _member(a: AssignmentRow) -> Member:
    return Member(a.id, a.volume.unit_name, a.target_iqn, a.volume.device)


def allocate_pair(db: Database, host: str, initiator_iqn: str, host_address: str, size_bytes: int,
                  vault: ChapVault | None = None, allowed: Allowed | None = None,
                  mutual: bool = False) -> int:
    """Record a new mirror over the best-fitting pair of free volumes on two units; returns its id.

    NOTE: as `assignments.allocate`, the UNIQUE constraint on assignments.volume_id refuses a
    volume taken meanwhile; the whole transaction (mirror and both members) rolls back and retries.
    """
    check_unit_name(host)
    check_iqn(initiator_iqn)
    for _ in range(ATTEMPTS):
        try:
            with db.session() as s:
                a, b = best_pair(assignments.free_candidates(s, allowed), size_bytes)
                m = MirrorRow(host_name=host, requested_bytes=size_bytes, created_at=utcnow(),
                              state=MirrorState.UNKNOWN)
                s.add(m)
                s.flush()
                for c in (a, b):
                    assignments.new_row(s, c, host, initiator_iqn, host_address, size_bytes, vault,
                                        mutual, mirror_id=m.id)
                return m.id
        except IntegrityError:
            continue
    raise Conflict(f"the pool is too busy: could not allocate a mirror after {ATTEMPTS} attempts, try again")


def undo(s: Session, mirror_id: int) -> list[str]:
    """Take back a mirror whose exports were not all confirmed: its volumes return to the pool
    unwiped (its host never learnt of them); returns the units to push again."""
    m = get(s, mirror_id)
    units = [assignments.delete(s, a.id, wipe=False) for a in list(m.members)]
    s.delete(m)
    s.flush()
    return units


async def _step(ctx: TaskContext | None, step: int, total: int, message: str) -> None:
    if ctx is not None:
        await ctx.progress(step, total, message)


async def confirm(pusher: ExportPusher, members: list[Member]) -> dict[int, DvsanError]:
    """Push each member's unit (at once); assignment id -> why its export was not confirmed."""
    async def one(m: Member) -> DvsanError | None:
        try:
            result = await pusher.push(m.unit)
        except DvsanError as e:
            return e
        refusal = result.refused.get(m.target_iqn)
        return Conflict(f"unit {m.unit} refused the export of {m.device}: {refusal}") if refusal else None
    got = await asyncio.gather(*(one(m) for m in members))
    return {m.id: e for m, e in zip(members, got, strict=True) if e is not None}


async def push_quietly(pusher: ExportPusher, units: list[str]) -> None:
    for u in sorted(set(units)):
        await pusher.push_quietly(u)


def _failure(errors: dict[int, DvsanError], members: list[Member], then: str) -> DvsanError:
    by_id = {m.id: m for m in members}
    why = "; ".join(f"unit {by_id[i].unit} did not confirm the export of {by_id[i].device}: {e}"
                    for i, e in sorted(errors.items()))
    cls = Conflict if all(isinstance(e, Conflict) for e in errors.values()) else Unavailable
    return cls(f"{why}; {then}")


async def create(db: Database, pusher: ExportPusher, host: str, initiator_iqn: str, host_address: str,
                 size_bytes: int, ctx: TaskContext | None = None, allowed: Allowed | None = None,
                 mutual: bool = False) -> tuple[int, list[Member]]:
    """A new mirror for `host`: two volumes on two units, both exports confirmed, or nothing."""
    await _step(ctx, 0, 2, "choosing two free volumes on two different units")
    mid = await asyncio.to_thread(allocate_pair, db, host, initiator_iqn, host_address, size_bytes,
                                  pusher.vault, allowed, mutual)

    def load() -> list[Member]:
        with db.session() as s:
            return [_member(a) for a in get(s, mid).members]
    members = await asyncio.to_thread(load)
    await _step(ctx, 1, 2, "units " + " and ".join(f"{m.unit} ({m.device})" for m in members)
                + f" export mirror {mid} to host {host}")
    failed = await confirm(pusher, members)
    if failed:
        def take_back() -> list[str]:
            with db.session() as s:
                return undo(s, mid)
        await push_quietly(pusher, await asyncio.to_thread(take_back))
        raise _failure(failed, members, f"mirror {mid} was undone: both volumes were returned to the pool")
    log.info("mirror %d made for host %s: %s", mid, host, ", ".join(f"{m.unit}:{m.device}" for m in members))
    return mid, members


async def release(db: Database, pusher: ExportPusher, wiper: wipes.WipeService, mirror_id: int,
                  ctx: TaskContext | None = None, requested_by: str = "station") -> list[assignments.Released]:
    """Release every member like any release (export dropped, volume wiped), then the mirror."""
    def ids() -> list[int]:
        with db.session() as s:
            return [a.id for a in get(s, mirror_id).members]
    members = await asyncio.to_thread(ids)
    out = []
    for i, aid in enumerate(members):
        await _step(ctx, i, len(members) + 1, f"releasing member {aid} of mirror {mirror_id}")
        out.append(await assignments.release(db, pusher, wiper, aid, None, requested_by))

    def forget() -> None:
        with db.session() as s:
            m = get(s, mirror_id)
            if not m.members:
                s.delete(m)
    await _step(ctx, len(members), len(members) + 1, f"forgetting mirror {mirror_id}")
    await asyncio.to_thread(forget)
    return out


# --- health ---------------------------------------------------------------------------------------

def record_health(s: Session, mirror_id: int, state: str, sync_percent: float | None, detail: str | None,
                  members: dict[int, str]) -> bool:
    """A host's report of its array: the mirror's state and each member's; True if anything changed.

    Member ids that are not this mirror's are refused (InvalidInput), and nothing is changed.
    """
    m = get(s, mirror_id)
    mine = {a.id: a for a in m.members}
    strangers = sorted(set(members) - set(mine))
    if strangers:
        raise InvalidInput(f"assignment(s) {', '.join(map(str, strangers))} are not members of mirror "
                           f"{mirror_id} (its members: {', '.join(map(str, sorted(mine))) or 'none'})")
    before = (m.state, m.sync_percent, m.detail, {i: a.member_state for i, a in mine.items()})
    m.state, m.sync_percent, m.detail = state, sync_percent, detail[:255] if detail else None
    for i, ms in members.items():
        mine[i].member_state = ms
    m.reported_at = utcnow()
    return before != (m.state, m.sync_percent, m.detail, {i: a.member_state for i, a in mine.items()})


def needs_auto_replace(s: Session, mirror_id: int) -> bool:
    """A member the host says is faulty or missing, on a unit that is not online: the case the
    station's `auto_replace` setting replaces by itself (a member faulty on a live unit waits for
    an operator: the unit may be fine and the fault the host's)."""
    return any(a.member_state in FAILED_MEMBER and a.volume.unit.state != UnitState.ONLINE
               for a in get(s, mirror_id).members)


# --- replace --------------------------------------------------------------------------------------

def failed_member(s: Session, mirror_id: int, member_id: int | None = None) -> AssignmentRow:
    """The member to replace: the one named, else one whose unit is not online, else one its host
    reports faulty or missing; Conflict if none is (a healthy mirror is not changed)."""
    m = get(s, mirror_id)
    if member_id is not None:
        named = next((a for a in m.members if a.id == member_id), None)
        if named is None:
            raise InvalidInput(f"assignment {member_id} is not a member of mirror {mirror_id} (its members: "
                               f"{', '.join(str(a.id) for a in m.members) or 'none'})")
        return named
    for a in m.members:
        if a.volume.unit.state != UnitState.ONLINE:
            return a
    for a in m.members:
        if a.member_state in FAILED_MEMBER:
            return a
    raise Conflict(f"mirror {mirror_id} has no failed member to replace: "
                   + ", ".join(f"member {a.id} on unit {a.volume.unit_name} ({a.volume.unit.state}) is "
                               f"{a.member_state}" for a in m.members)
                   + "; name one with {\"member\": ID} to replace it anyway")


@dataclass(frozen=True)
class Plan:
    """What a replacement does: the old member, the new one, and whether this run made the new one."""

    old: int
    new: Member
    made: bool


def plan_replacement(db: Database, mirror_id: int, member_id: int | None, vault: ChapVault | None) -> Plan:
    """Choose (or find, after an interrupted run) the new member: a free volume of at least the
    mirror's size on a unit holding no member of it, exported to the mirror's host."""
    for _ in range(ATTEMPTS):
        try:
            with db.session() as s:
                m = get(s, mirror_id)
                old = failed_member(s, mirror_id, member_id)
                if any(a.fenced for a in m.members):
                    raise Conflict(f"mirror {mirror_id}'s host {m.host_name} is fenced (a takeover): "
                                   "replace its member once the takeover has ended")
                others = [a for a in m.members if a.id != old.id]
                if len(others) >= 2:
                    # NOTE: an earlier run made the new member, then stopped (a station killed)
                    # before releasing the old one: finish that, do not add a third.
                    return Plan(old.id, _member(max(others, key=lambda a: a.id)), False)
                taken = {a.volume.unit_name for a in m.members}
                free = [c for c in assignments.free_candidates(s) if c.unit not in taken]
                try:
                    c = best_fit(free, m.requested_bytes)
                except InsufficientCapacity as e:
                    raise Conflict(f"no unit holding no member of mirror {mirror_id} (its members are on "
                                   f"{', '.join(sorted(taken))}) has a free volume to replace member "
                                   f"{old.id}: {e}") from e
                row = assignments.new_row(s, c, m.host_name, old.initiator_iqn, old.host_address,
                                          m.requested_bytes, vault, bool(old.mutual_user), mirror_id=m.id)
                return Plan(old.id, _member(row), True)
        except IntegrityError:
            continue
    raise Conflict(f"the pool is too busy: could not choose a new member after {ATTEMPTS} attempts, try again")


async def replace(db: Database, pusher: ExportPusher, wiper: wipes.WipeService, mirror_id: int,
                  member_id: int | None = None, ctx: TaskContext | None = None,
                  requested_by: str = "station") -> dict[str, Any]:
    """Replace a failed member: the new one exported and confirmed, then the old one released."""
    await _step(ctx, 0, 3, f"choosing a new member for mirror {mirror_id}")
    plan = await asyncio.to_thread(plan_replacement, db, mirror_id, member_id, pusher.vault)
    new = plan.new
    await _step(ctx, 1, 3, f"unit {new.unit} exports {new.device} (assignment {new.id}) for mirror {mirror_id}")
    failed = await confirm(pusher, [new])
    if failed:
        if plan.made:
            def take_back() -> str:
                with db.session() as s:
                    return assignments.delete(s, new.id, wipe=False)
            await push_quietly(pusher, [await asyncio.to_thread(take_back)])
            raise _failure(failed, [new], f"the new member was returned to the pool; member {plan.old} "
                           "is unchanged")
        raise _failure(failed, [new], f"member {plan.old} is kept until it does; run the replacement again")
    await _step(ctx, 2, 3, f"releasing the old member {plan.old} (its export dropped, its volume wiped)")
    r = await assignments.release(db, pusher, wiper, plan.old, None, requested_by)
    log.info("mirror %d: member %d replaced by %d (%s:%s); old unit %s %s", mirror_id, plan.old, new.id,
             new.unit, new.device, r.unit, "dropped it" if r.unit_confirmed else "drops and wipes it when it reports")
    return {"mirror": mirror_id, "old_member": plan.old, "new_member": new.id, "unit": new.unit,
            "device": new.device, "old_unit": r.unit, "old_unit_confirmed": r.unit_confirmed,
            "old_volume": r.volume_id, "old_wipe_state": r.wipe_state}


# --- takeover -------------------------------------------------------------------------------------

def check_release(who: auth.Principal, rows: list[AssignmentRow]) -> None:
    """A host may not release what a takeover has fenced: it is its spare host's to be."""
    fenced = [a.id for a in rows if a.fenced]
    if fenced and who.kind == "host":
        raise Conflict(f"assignment(s) {', '.join(map(str, fenced))} of host {who.name} are fenced: "
                       "a takeover is moving them to another host")


def check_takeover(s: Session, name: str, to: str) -> None:
    """May `to` take over `name`'s storage: another host, enrolled, with an initiator name."""
    if to == name:
        raise Conflict(f"host {name!r} cannot take over its own storage: name a spare host in 'to'")
    if not auth.get_host(s, to).initiators:
        raise Conflict(f"host {to!r} has no initiator name enrolled")


def fence(s: Session, name: str) -> tuple[list[int], list[str]]:
    """Fence every assignment of `name`; returns their ids and the units that must drop them."""
    rows = list(s.scalars(select(AssignmentRow).where(AssignmentRow.host_name == name).order_by(AssignmentRow.id)))
    units = sorted({a.volume.unit_name for a in rows})
    for a in rows:
        a.fenced = True
    for u in units:
        pool.bump_generation(s, u)
    return [a.id for a in rows], units


def move(s: Session, name: str, to: str, vault: ChapVault | None) -> tuple[list[int], list[int], list[str]]:
    """Give `to` every fenced assignment of `name` (its initiator, its address if known, fresh CHAP
    secrets) and its mirrors; returns the assignments, the mirrors and the units to push."""
    check_takeover(s, name, to)
    iqn = auth.get_host(s, to).initiators[0]
    address = s.scalars(select(AssignmentRow.host_address).where(AssignmentRow.host_name == to)
                        .order_by(AssignmentRow.id.desc())).first()
    rows = list(s.scalars(select(AssignmentRow).where(AssignmentRow.host_name == name,
                                                      AssignmentRow.fenced.is_(True)).order_by(AssignmentRow.id)))
    for a in rows:
        a.host_name, a.initiator_iqn = to, iqn
        a.host_address = address or a.host_address
        if vault is not None:
            a.chap_user, a.chap_secret_sealed = vault.new(a.target_iqn)
            if a.mutual_user:
                a.mutual_user, a.mutual_secret_sealed = vault.new_mutual(a.target_iqn)
        a.fenced, a.export_state, a.export_detail = False, ExportState.PENDING, None
        a.member_state = MemberState.UNKNOWN if a.mirror_id is not None else a.member_state
    s.flush()
    # a mirror goes with its members: only once none of them is left behind (unfenced) with `name`
    mirrors = [m for m in s.scalars(select(MirrorRow).where(MirrorRow.host_name == name).order_by(MirrorRow.id))
               if all(a.host_name == to for a in m.members)]
    for m in mirrors:
        m.host_name = to
    units = sorted({a.volume.unit_name for a in rows})
    for u in units:
        pool.bump_generation(s, u)
    return [a.id for a in rows], [m.id for m in mirrors], units


async def takeover(db: Database, pusher: ExportPusher, name: str, to: str,
                   ctx: TaskContext | None = None) -> dict[str, Any]:
    """Move `name`'s storage to `to`: fence `name` at every unit (each must confirm), then move."""
    def step1() -> tuple[list[int], list[str]]:
        with db.session() as s:
            check_takeover(s, name, to)
            return fence(s, name)
    await _step(ctx, 0, 2, f"fencing host {name} at every unit holding its storage")
    ids, units = await asyncio.to_thread(step1)
    pushed = await asyncio.gather(*(_push(pusher, u) for u in units))
    failed = {u: e for u, e in zip(units, pushed, strict=True) if e is not None}
    if failed:
        raise Unavailable(f"fencing host {name} is not confirmed by unit(s) "
                          + "; ".join(f"{u}: {e}" for u, e in failed.items())
                          + f": its {len(ids)} assignment(s) stay fenced (host {name} cannot use them); "
                          "run the takeover again once the unit(s) answer")
    await _step(ctx, 1, 2, f"moving {len(ids)} assignment(s) of host {name} to host {to}")

    def step2() -> tuple[list[int], list[int], list[str]]:
        with db.session() as s:
            return move(s, name, to, pusher.vault)
    moved, mirrors, units = await asyncio.to_thread(step2)
    pushed = await asyncio.gather(*(_push(pusher, u) for u in units))
    late = {u: str(e) for u, e in zip(units, pushed, strict=True) if e is not None}
    for u, e in late.items():
        log.warning("takeover %s -> %s: unit %s did not confirm the new exports (%s); it gets them "
                    "at its next report", name, to, u, e)
    log.warning("host %s taken over by host %s: assignments %s, mirrors %s", name, to, moved, mirrors)
    return {"from": name, "to": to, "assignments": moved, "mirrors": mirrors, "unconfirmed": late}


async def _push(pusher: ExportPusher, unit: str) -> DvsanError | None:
    try:
        await pusher.push(unit)
    except DvsanError as e:
        return e
    return None
