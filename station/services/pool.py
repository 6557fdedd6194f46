"""Pool service: units and their volumes, as built from the units' announcements."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, selectinload

from dvsan.errors import Conflict, NotFound
from dvsan.model import Export, Extent, Partition, mutual_aad
from dvsan.naming import check_unit_name
from station.db.tables import (
    UNIT_DOWN_STATES,
    AssignmentRow,
    ExportState,
    Health,
    PendingDropRow,
    PoolRow,
    UnitRow,
    UnitState,
    VolumeRow,
    VolumeState,
    WipeState,
    utcnow,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolChange:
    """What one storage-info message changed."""

    added: int
    updated: int
    missing: int
    online: int
    changed: int = 0      # assigned volumes reported with another extent or identity: withheld


def record_startup(s: Session, name: str, control: tuple[str, int], portal_address: str,
                   portal_port: int, dns_name: str | None, agent_version: str) -> UnitRow:
    """A unit said it is up: store or refresh it. Its volumes stay as they were until storage info."""
    check_unit_name(name)
    unit = s.get(UnitRow, name)
    if unit is None:
        unit = UnitRow(name=name)
        s.add(unit)
    unit.control_host, unit.control_port = control
    unit.portal_address = portal_address
    unit.portal_port = portal_port
    unit.dns_name = dns_name
    unit.agent_version = agent_version
    unit.state = UnitState.ONLINE
    unit.last_seen = utcnow()
    return unit


def record_storage_info(s: Session, name: str, partitions: list[Partition],
                        bring_online: bool = True) -> PoolChange:
    """Replace what the pool knows of a unit's partitions. Unreported volumes become 'missing' (kept).

    A free volume reported with a new extent is updated in place. An assigned one is never moved:
    it keeps the extent its host was given and becomes 'changed' (its export is withheld) until an
    operator releases it, or until the unit reports the original extent again.

    `bring_online` False (the unit went down after the station asked for this report) records
    the partitions but leaves a down unit down and its volumes offline.
    """
    unit = s.get(UnitRow, name)
    if unit is None or unit.state == UnitState.REMOVED:
        raise NotFound(f"unit {name!r} sent storage info before announcing itself")
    vstate = VolumeState.ONLINE
    if bring_online or unit.state == UnitState.ONLINE:
        unit.state = UnitState.ONLINE
        unit.last_seen = utcnow()
    else:
        vstate = VolumeState.OFFLINE
    existing = {v.device: v for v in s.scalars(select(VolumeRow).where(VolumeRow.unit_name == name))}
    added = updated = changed = 0
    now = utcnow()
    for p in partitions:
        v = existing.pop(p.device, None)
        if v is None:
            v = VolumeRow(unit_name=name, device=p.device)
            s.add(v)
            added += 1
        else:
            updated += 1
            if v.assignment is not None:
                why = volume_extent(v).mismatch(p.extent)
                if why is not None:
                    if v.state != VolumeState.CHANGED:
                        log.warning("unit %s reports %s with another extent under an assigned volume "
                                    "(host %s): %s; its export is withheld", name, p.device,
                                    v.assignment.host_name, why)
                    v.state, v.detail, v.updated_at = VolumeState.CHANGED, why[:255], now
                    changed += 1
                    continue
        v.disk, v.number = p.disk, p.number
        v.start_lba, v.length_blocks, v.end_lba = p.start_lba, p.length_blocks, p.end_lba
        v.block_size, v.size_bytes = p.block_size, p.size_bytes
        v.uid = p.uid or v.uid
        v.state, v.detail = vstate, None
        v.updated_at = now
    for v in existing.values():
        v.state = VolumeState.MISSING
        v.detail = "no longer reported by its unit"
        v.updated_at = now
    return PoolChange(added, updated, len(existing), len(partitions) - changed, changed)


def volume_extent(v: VolumeRow) -> Extent:
    return Extent(v.start_lba, v.length_blocks, v.block_size, v.uid)


def pool_id(s: Session) -> str:
    """This pool's identity, made once per database (the migration makes it; this is a fallback)."""
    row = s.get(PoolRow, 1)
    if row is None:
        row = PoolRow(id=1, pool_id=str(uuid.uuid4()))
        s.add(row)
        s.flush()
    return row.pool_id


def bump_generation(s: Session, unit: str) -> None:
    """What `unit` must export changed: a new generation (one SQL update, safe under concurrency)."""
    s.execute(update(UnitRow).where(UnitRow.name == unit).values(generation=UnitRow.generation + 1))


def record_shutdown(s: Session, name: str, state: str = UnitState.OFFLINE) -> int:
    """A unit is down (`state` says how): its volumes are offline, kept with their assignments."""
    if state not in UNIT_DOWN_STATES:
        raise ValueError(f"not a down state: {state}")
    unit = s.get(UnitRow, name)
    if unit is None:
        raise NotFound(f"unknown unit {name!r}")
    if unit.state == UnitState.REMOVED:
        return 0                       # a removed unit's goodbye (or trap) changes nothing
    unit.state = state
    if state == UnitState.OFFLINE:
        unit.last_seen = utcnow()
    n = 0
    for v in s.scalars(select(VolumeRow).where(VolumeRow.unit_name == name, VolumeRow.state == VolumeState.ONLINE)):
        v.state = VolumeState.OFFLINE
        n += 1
    return n


def record_heartbeat(s: Session, name: str, health: str = Health.OK, detail: str | None = None) -> str:
    """A unit says it is alive (and how healthy); returns the state the station holds it in."""
    unit = s.get(UnitRow, name)
    if unit is None or unit.state == UnitState.REMOVED:
        return "unknown"
    if unit.state == UnitState.ONLINE:
        unit.last_seen = utcnow()
        if (unit.health, unit.health_detail) != (health, detail):
            log.warning("unit %s health: %s%s", name, health, f" ({detail})" if detail else "")
            unit.health, unit.health_detail = health, detail
    return unit.state


def silent_units(s: Session, older_than: datetime) -> list[str]:
    """Online units not heard from since `older_than` (UTC)."""
    out = []
    for u in s.scalars(select(UnitRow).where(UnitRow.state == UnitState.ONLINE)):
        seen = u.last_seen if u.last_seen.tzinfo else u.last_seen.replace(tzinfo=UTC)  # SQLite drops tz
        if seen < older_than:
            out.append(u.name)
    return out


def get_unit(s: Session, name: str) -> UnitRow:
    unit = s.get(UnitRow, name)
    if unit is None or unit.state == UnitState.REMOVED:
        raise NotFound(f"no unit named {name!r}")
    return unit


def list_units(s: Session) -> list[UnitRow]:
    return list(s.scalars(select(UnitRow).where(UnitRow.state != UnitState.REMOVED).order_by(UnitRow.name)))


@dataclass(frozen=True)
class Removal:
    unit: str
    volumes: int        # free, clean volumes forgotten with it


def remove_unit(s: Session, name: str) -> Removal:
    """An operator takes a unit out of the pool: only a unit that is not online (its agent would
    announce it again at once), holds no assignment, and owes no wipe (a volume that may still
    hold a previous host's bytes must never come back as a fresh one). Its volumes are forgotten;
    if the unit announces itself later, it rejoins with new volumes."""
    unit = get_unit(s, name)
    if unit.state == UnitState.ONLINE:
        raise Conflict(f"unit {name!r} is online: stop its agent (it says goodbye and goes offline) "
                       "before removing it, or it announces itself again at once")
    vols = list(s.scalars(select(VolumeRow).where(VolumeRow.unit_name == name).order_by(VolumeRow.id)))
    held = [(v.id, a.host_name) for v in vols if (a := v.assignment) is not None]
    if held:
        raise Conflict(f"unit {name!r} holds {len(held)} assignment(s): release them first ("
                       + ", ".join(f"volume {i} to host {h}" for i, h in held[:10])
                       + (", ..." if len(held) > 10 else "") + ")")
    owed = [v for v in vols if v.wipe_state != WipeState.CLEAN]
    if owed:
        raise Conflict(f"unit {name!r} owes the wipe of {len(owed)} released volume(s) ("
                       + ", ".join(str(v.id) for v in owed[:10]) + (", ..." if len(owed) > 10 else "")
                       + "): bring it back online so it zeroes them, then remove it")
    for v in vols:
        s.delete(v)
    unit.state = UnitState.REMOVED
    unit.health, unit.health_detail = Health.OK, None
    s.flush()
    log.warning("unit %s removed from the pool with its %d free volume(s)", name, len(vols))
    return Removal(name, len(vols))


def list_volumes(s: Session, unit: str | None = None, state: str | None = None) -> list[VolumeRow]:
    """The volumes, with their assignments loaded in one more query (not one per volume: the
    listing shows whom each is assigned to)."""
    q = (select(VolumeRow).options(selectinload(VolumeRow.assignment))
         .order_by(VolumeRow.unit_name, VolumeRow.device))
    if unit:
        q = q.where(VolumeRow.unit_name == unit)
    if state:
        q = q.where(VolumeRow.state == state)
    return list(s.scalars(q))


@dataclass(frozen=True)
class DesiredState:
    """What one push tells a unit: its exports, the targets to drop, and what is withheld."""

    pool_id: str
    generation: int
    exports: list[Export]
    drop: list[str]
    withheld: dict[int, str]       # assignment id -> why its export is not sent


def desired_exports(s: Session, unit: str) -> list[Export]:
    """The exports a unit must hold: one per assigned online volume, ACLs for exactly its host."""
    return desired_state(s, unit).exports


def desired_state(s: Session, unit: str, reveal: Callable[[str, str], str] | None = None) -> DesiredState:
    """Everything a push to `unit` carries. Volumes not online (offline, missing, changed) are
    withheld: never sent, so never re-created on whatever the device is now. `reveal(target,
    sealed)` opens an assignment's CHAP secret; without it an export with CHAP is an error (it
    must never go out without its CHAP). A fenced assignment (a host takeover) is withheld and
    its target dropped, like a changed volume's."""
    u = get_unit(s, unit)
    rows = s.execute(
        select(AssignmentRow, VolumeRow).join(VolumeRow, AssignmentRow.volume_id == VolumeRow.id)
        .where(VolumeRow.unit_name == unit).order_by(AssignmentRow.id)
    )
    exports, withheld, moved = [], {}, []
    for a, v in rows:
        if a.fenced:
            # A host takeover fences the old host: its export goes, even under its live sessions
            # (the host may be alive and writing), and is not sent again until the move.
            withheld[a.id] = f"fenced: host {a.host_name} is being taken over"
            moved.append(a.target_iqn)
            continue
        if v.state != VolumeState.ONLINE:
            withheld[a.id] = f"volume is {v.state}" + (f": {v.detail}" if v.detail else "")
            if v.state == VolumeState.CHANGED:
                # The device is another extent now: an export of it must go even under a live
                # session (the host would write over someone else's blocks), not merely wait.
                moved.append(a.target_iqn)
            continue
        secret = ""
        if a.chap_user:
            if reveal is None:
                raise ValueError(f"assignment {a.id} has CHAP and nothing to open its secret with")
            secret = reveal(a.target_iqn, a.chap_secret_sealed)
        mutual = reveal(mutual_aad(a.target_iqn), a.mutual_secret_sealed) \
            if a.mutual_user and reveal is not None else ""
        exports.append(Export(device=v.device, target_iqn=a.target_iqn, initiators=(a.initiator_iqn,),
                              lun=a.lun, wwn=a.wwn, extent=volume_extent(v), chap_user=a.chap_user,
                              chap_secret=secret, mutual_user=a.mutual_user if mutual else "",
                              mutual_secret=mutual))
    drop = sorted({*s.scalars(select(PendingDropRow.target_iqn).where(PendingDropRow.unit_name == unit)),
                   *moved})
    return DesiredState(pool_id(s), u.generation, exports, drop, withheld)


def add_pending_drop(s: Session, unit: str, target: str) -> None:
    if s.get(PendingDropRow, target) is None:
        s.add(PendingDropRow(target_iqn=target, unit_name=unit))


def clear_pending_drops(s: Session, targets: list[str]) -> None:
    if targets:
        s.execute(delete(PendingDropRow).where(PendingDropRow.target_iqn.in_(targets)))


def record_export_results(s: Session, unit: str, state: DesiredState, refused: dict[str, str]) -> None:
    """Note on each assignment of `unit` what the last push found: exported, refused (the unit's
    reason) or withheld (the station's); drops the unit carried out are forgotten."""
    for a in s.scalars(select(AssignmentRow).join(VolumeRow).where(VolumeRow.unit_name == unit)):
        if a.id in state.withheld:
            a.export_state, a.export_detail = ExportState.WITHHELD, state.withheld[a.id][:255]
        elif a.target_iqn in refused:
            a.export_state, a.export_detail = ExportState.REFUSED, refused[a.target_iqn][:255]
        else:
            a.export_state, a.export_detail = ExportState.EXPORTED, None
    clear_pending_drops(s, [t for t in state.drop if t not in refused])
