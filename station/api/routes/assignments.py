"""REST routes of the station: thin, delegating to the pool and assignment services."""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, status
from starlette.concurrency import run_in_threadpool

from dvsan.errors import Conflict, DvsanError, Unavailable
from station import assignments, pool
from station.autoconf import AutoconfServer
from station.db import Database
from station.schemas import (
    AssignmentCreate,
    AssignmentPublic,
    ReleasePublic,
    UnitPublic,
    VolumePublic,
)
from station.tables import AssignmentRow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")


def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def get_autoconf(request: Request) -> AutoconfServer:
    return request.app.state.autoconf  # type: ignore[no-any-return]


DbDep = Annotated[Database, Depends(get_db)]
AutoconfDep = Annotated[AutoconfServer, Depends(get_autoconf)]


def assignment_public(a: AssignmentRow) -> AssignmentPublic:
    v = a.volume
    u = v.unit
    return AssignmentPublic(
        id=a.id, host=a.host_name, initiator_iqn=a.initiator_iqn, host_address=a.host_address,
        requested_bytes=a.requested_bytes, volume_id=v.id, unit=u.name, unit_address=u.portal_address,
        unit_dns_name=u.dns_name, portal_port=u.portal_port, target_iqn=a.target_iqn, lun=a.lun,
        device=v.device, size_bytes=v.size_bytes, start_lba=v.start_lba, end_lba=v.end_lba,
        block_size=v.block_size, volume_state=v.state, created_at=a.created_at, wwn=a.wwn,
        export_state=a.export_state, export_detail=a.export_detail, volume_detail=v.detail)


@router.get("/units", response_model=list[UnitPublic])
def list_units(db: DbDep) -> list[UnitPublic]:
    with db.session() as s:
        return [UnitPublic.model_validate(u) for u in pool.list_units(s)]


@router.get("/units/{name}", response_model=UnitPublic)
def get_unit(name: str, db: DbDep) -> UnitPublic:
    with db.session() as s:
        return UnitPublic.model_validate(pool.get_unit(s, name))


@router.get("/volumes", response_model=list[VolumePublic])
def list_volumes(db: DbDep, unit: str | None = None,
                 state: Annotated[str | None, Query(pattern="^(online|offline|missing|changed)$")] = None
                 ) -> list[VolumePublic]:
    """The virtual storage pool: every volume the units reported, with where it is assigned."""
    with db.session() as s:
        out = []
        for v in pool.list_volumes(s, unit, state):
            vp = VolumePublic.model_validate(v)
            vp.assigned_to = v.assignment.host_name if v.assignment else None
            out.append(vp)
        return out


@router.get("/assignments", response_model=list[AssignmentPublic])
def list_assignments(db: DbDep, host: str | None = None) -> list[AssignmentPublic]:
    with db.session() as s:
        return [assignment_public(a) for a in assignments.list_all(s, host)]


@router.get("/assignments/{assignment_id}", response_model=AssignmentPublic)
def get_assignment(assignment_id: int, db: DbDep) -> AssignmentPublic:
    with db.session() as s:
        return assignment_public(assignments.get(s, assignment_id))


@router.post("/assignments", response_model=AssignmentPublic, status_code=status.HTTP_201_CREATED)
async def create_assignment(body: AssignmentCreate, db: DbDep, autoconf: AutoconfDep) -> AssignmentPublic:
    """Give a host the smallest free volume that fits; answers once the unit exports it to the host."""
    aid = await run_in_threadpool(assignments.allocate, db, body.host, body.initiator_iqn,
                                  body.host_address, body.size_bytes)

    def load() -> AssignmentPublic:
        with db.session() as s:
            return assignment_public(assignments.get(s, aid))

    out = await run_in_threadpool(load)
    try:
        ack = await autoconf.push_exports(out.unit)
        refusal = ack["refused"].get(out.target_iqn)
        if refusal is not None:
            raise Conflict(f"unit {out.unit} refused the export of {out.device}: {refusal}")
    except DvsanError as e:
        # The unit never confirmed: take the assignment back so the volume is not lost to the pool,
        # then push again so the unit drops whatever part of the export it may have made.
        def undo() -> None:
            with db.session() as s:
                assignments.delete(s, aid)
        await run_in_threadpool(undo)
        try:
            await autoconf.push_exports(out.unit)
        except DvsanError as again:
            log.warning("after undoing assignment %d, unit %s is not yet reconciled: %s "
                        "(it will be at its next storage report)", aid, out.unit, again)
        cls = Conflict if isinstance(e, Conflict) else Unavailable
        raise cls(f"unit {out.unit} did not confirm the export of {out.device}: {e}; "
                  "the volume was returned to the pool") from e
    out = await run_in_threadpool(load)
    log.info("assigned %s:%s (%d bytes) to host %s (%s)", out.unit, out.device, out.size_bytes,
             out.host, out.initiator_iqn)
    return out


@router.delete("/assignments/{assignment_id}", response_model=ReleasePublic)
async def delete_assignment(assignment_id: int, db: DbDep, autoconf: AutoconfDep) -> ReleasePublic:
    """Release a volume: the assignment goes, the unit drops the export, the volume is free again."""
    def remove() -> str:
        with db.session() as s:
            return assignments.delete(s, assignment_id)

    unit = await run_in_threadpool(remove)
    try:
        ack = await autoconf.push_exports(unit)
        return ReleasePublic(id=assignment_id, unit=unit, unit_confirmed=True,
                             detail="released; the unit removed the export"
                             + (f" (other exports refused: {len(ack['refused'])})" if ack["refused"] else ""))
    except DvsanError as e:
        return ReleasePublic(id=assignment_id, unit=unit, unit_confirmed=False,
                             detail=f"released; the unit will drop the export when it next reconciles ({e})")


@router.get("/protocol/stats")
def protocol_stats(autoconf: AutoconfDep, request: Request) -> dict[str, int]:
    """Counters of the auto-configuration listener (received, dropped by reason, retransmits...)
    and, when it runs, of the SNMP notification receiver (snmp_*: received, accepted,
    rejected and ignored by reason)."""
    snmp = getattr(request.app.state, "snmp", None)
    return {**autoconf.stats, **(snmp.stats if snmp is not None else {"snmp_listening": 0})}
