"""Assignment service: give a host a volume from the pool, and take it back."""

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dvsan.allocation import best_fit
from dvsan.errors import Conflict, NotFound
from dvsan.model import Candidate
from dvsan.naming import check_iqn, check_unit_name, target_iqn, volume_wwn
from station import pool
from station.db import Database
from station.tables import AssignmentRow, UnitRow, VolumeRow


def free_candidates(s: Session) -> list[Candidate]:
    """Online volumes of online, healthy units that no host holds."""
    q = (select(VolumeRow.id, VolumeRow.unit_name, VolumeRow.device, VolumeRow.size_bytes)
         .join(UnitRow, UnitRow.name == VolumeRow.unit_name)
         .outerjoin(AssignmentRow, AssignmentRow.volume_id == VolumeRow.id)
         .where(VolumeRow.state == "online", UnitRow.state == "online", UnitRow.health == "ok",
                AssignmentRow.id.is_(None)))
    return [Candidate(*row) for row in s.execute(q)]


def allocate(db: Database, host: str, initiator_iqn: str, host_address: str, size_bytes: int) -> int:
    """Record a new assignment of the best-fitting free volume; returns its id.

    NOTE: the UNIQUE constraint on assignments.volume_id is what makes double allocation
    impossible, on SQLite and PostgreSQL alike; a lost race just retries with the next best fit.
    """
    check_unit_name(host)
    check_iqn(initiator_iqn)
    for _ in range(20):
        try:
            with db.session() as s:
                c = best_fit(free_candidates(s), size_bytes)
                v = s.get_one(VolumeRow, c.volume_id)
                target = target_iqn(c.unit, c.device)
                row = AssignmentRow(volume_id=c.volume_id, host_name=host, initiator_iqn=initiator_iqn,
                                    host_address=host_address, requested_bytes=size_bytes,
                                    target_iqn=target, lun=0,
                                    wwn=volume_wwn(pool.pool_id(s), c.unit, c.device, v.start_lba,
                                                   v.length_blocks, v.block_size, v.uid))
                s.add(row)
                s.flush()
                # The export is wanted again: a drop still pending from an earlier release is void.
                pool.clear_pending_drops(s, [target])
                pool.bump_generation(s, c.unit)
                return row.id
        except IntegrityError:
            continue
    raise Conflict("the pool is too busy: could not allocate after 20 attempts, try again")


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


def delete(s: Session, assignment_id: int) -> str:
    """Remove an assignment; the volume is free again. Returns the unit that must drop the export.

    The drop is recorded as an operator's release: the unit removes the export even if its host
    is still logged in (a routine reconcile never drops an export under live sessions).
    """
    row = get(s, assignment_id)
    unit = row.volume.unit_name
    pool.add_pending_drop(s, unit, row.target_iqn)
    s.delete(row)
    s.flush()
    pool.bump_generation(s, unit)
    return unit
