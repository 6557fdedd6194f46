"""Pool service: units and their volumes, as built from the units' announcements."""

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from dvsan.errors import NotFound
from dvsan.model import Export, Partition
from dvsan.naming import check_unit_name
from station.tables import AssignmentRow, UnitRow, VolumeRow, utcnow


@dataclass(frozen=True)
class PoolChange:
    """What one storage-info message changed."""

    added: int
    updated: int
    missing: int
    online: int


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
    unit.state = "online"
    unit.last_seen = utcnow()
    return unit


def record_storage_info(s: Session, name: str, partitions: list[Partition]) -> PoolChange:
    """Replace what the pool knows of a unit's partitions. Unreported volumes become 'missing' (kept)."""
    unit = s.get(UnitRow, name)
    if unit is None:
        raise NotFound(f"unit {name!r} sent storage info before announcing itself")
    unit.state = "online"
    unit.last_seen = utcnow()
    existing = {v.device: v for v in s.scalars(select(VolumeRow).where(VolumeRow.unit_name == name))}
    added = updated = 0
    now = utcnow()
    for p in partitions:
        v = existing.pop(p.device, None)
        if v is None:
            v = VolumeRow(unit_name=name, device=p.device)
            s.add(v)
            added += 1
        else:
            updated += 1
        v.disk, v.number = p.disk, p.number
        v.start_lba, v.length_blocks, v.end_lba = p.start_lba, p.length_blocks, p.end_lba
        v.block_size, v.size_bytes = p.block_size, p.size_bytes
        v.state = "online"
        v.updated_at = now
    for v in existing.values():
        v.state = "missing"
        v.updated_at = now
    return PoolChange(added, updated, len(existing), len(partitions))


UNIT_DOWN_STATES = ("offline", "link-down", "unreachable")


def record_shutdown(s: Session, name: str, state: str = "offline") -> int:
    """A unit is down (`state` says how): its volumes are offline, kept with their assignments."""
    if state not in UNIT_DOWN_STATES:
        raise ValueError(f"not a down state: {state}")
    unit = s.get(UnitRow, name)
    if unit is None:
        raise NotFound(f"unknown unit {name!r}")
    unit.state = state
    if state == "offline":
        unit.last_seen = utcnow()
    n = 0
    for v in s.scalars(select(VolumeRow).where(VolumeRow.unit_name == name, VolumeRow.state == "online")):
        v.state = "offline"
        n += 1
    return n


def record_heartbeat(s: Session, name: str) -> str:
    """A unit says it is alive: note the time; returns the state the station holds it in."""
    unit = s.get(UnitRow, name)
    if unit is None:
        return "unknown"
    if unit.state == "online":
        unit.last_seen = utcnow()
    return unit.state


def silent_units(s: Session, older_than: datetime) -> list[str]:
    """Online units not heard from since `older_than` (UTC)."""
    out = []
    for u in s.scalars(select(UnitRow).where(UnitRow.state == "online")):
        seen = u.last_seen if u.last_seen.tzinfo else u.last_seen.replace(tzinfo=UTC)  # SQLite drops tz
        if seen < older_than:
            out.append(u.name)
    return out


def get_unit(s: Session, name: str) -> UnitRow:
    unit = s.get(UnitRow, name)
    if unit is None:
        raise NotFound(f"no unit named {name!r}")
    return unit


def list_units(s: Session) -> list[UnitRow]:
    return list(s.scalars(select(UnitRow).order_by(UnitRow.name)))


def list_volumes(s: Session, unit: str | None = None, state: str | None = None) -> list[VolumeRow]:
    q = select(VolumeRow).order_by(VolumeRow.unit_name, VolumeRow.device)
    if unit:
        q = q.where(VolumeRow.unit_name == unit)
    if state:
        q = q.where(VolumeRow.state == state)
    return list(s.scalars(q))


def desired_exports(s: Session, unit: str) -> list[Export]:
    """The exports a unit must hold: one per assigned volume, with ACLs for exactly its host."""
    rows = s.execute(
        select(AssignmentRow, VolumeRow).join(VolumeRow, AssignmentRow.volume_id == VolumeRow.id)
        .where(VolumeRow.unit_name == unit)
    )
    return [Export(device=v.device, target_iqn=a.target_iqn, initiators=(a.initiator_iqn,), lun=a.lun)
            for a, v in rows]
