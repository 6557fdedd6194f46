"""REST routes of the station: thin, delegating to the pool and assignment services."""

import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, status
from starlette.concurrency import run_in_threadpool

from dvsan.errors import NotFound
from station.api.schemas import (
    AssignmentCreate,
    AssignmentPublic,
    ReleasePublic,
    UnitPublic,
    VolumePublic,
)
from station.db import Database
from station.db.tables import AssignmentRow, VolumeRow
from station.listeners.autoconf import AutoconfListener
from station.services import assignments, pool
from station.services.exports import ExportPusher
from station.services.wipes import WipeService

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1")


def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def get_pusher(request: Request) -> ExportPusher:
    return request.app.state.pusher  # type: ignore[no-any-return]


def get_wipes(request: Request) -> WipeService:
    return request.app.state.wipes  # type: ignore[no-any-return]


def get_listener(request: Request) -> AutoconfListener:
    return request.app.state.listener  # type: ignore[no-any-return]


DbDep = Annotated[Database, Depends(get_db)]
PusherDep = Annotated[ExportPusher, Depends(get_pusher)]
WipesDep = Annotated[WipeService, Depends(get_wipes)]
ListenerDep = Annotated[AutoconfListener, Depends(get_listener)]


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
        return [volume_public(v) for v in pool.list_volumes(s, unit, state)]


def volume_public(v: VolumeRow) -> VolumePublic:
    vp = VolumePublic.model_validate(v)
    vp.assigned_to = v.assignment.host_name if v.assignment else None
    return vp


def load_volume(db: Database, volume_id: int) -> VolumePublic:
    with db.session() as s:
        v = s.get(VolumeRow, volume_id)
        if v is None:
            raise NotFound(f"no volume with id {volume_id}")
        return volume_public(v)


@router.get("/assignments", response_model=list[AssignmentPublic])
def list_assignments(db: DbDep, host: str | None = None) -> list[AssignmentPublic]:
    with db.session() as s:
        return [assignment_public(a) for a in assignments.list_all(s, host)]


def load_assignment(db: Database, assignment_id: int) -> AssignmentPublic:
    with db.session() as s:
        return assignment_public(assignments.get(s, assignment_id))


@router.get("/assignments/{assignment_id}", response_model=AssignmentPublic)
def get_assignment(assignment_id: int, db: DbDep) -> AssignmentPublic:
    return load_assignment(db, assignment_id)


@router.post("/assignments", response_model=AssignmentPublic, status_code=status.HTTP_201_CREATED)
async def create_assignment(body: AssignmentCreate, db: DbDep, pusher: PusherDep) -> AssignmentPublic:
    """Give a host the smallest free volume that fits; answers once the unit exports it to the host."""
    out = await assignments.assign(db, pusher, body.host, body.initiator_iqn, body.host_address,
                                   body.size_bytes)
    return await run_in_threadpool(load_assignment, db, out.id)


@router.delete("/assignments/{assignment_id}", response_model=ReleasePublic)
async def delete_assignment(assignment_id: int, db: DbDep, pusher: PusherDep, wipes: WipesDep
                            ) -> ReleasePublic:
    """Release a volume: the assignment goes, the unit drops the export and zeroes the volume;
    it is free again once the wipe has succeeded (`GET /api/v1/volumes` shows its progress)."""
    r = await assignments.release(db, pusher, wipes, assignment_id)
    return ReleasePublic(id=r.id, unit=r.unit, unit_confirmed=r.unit_confirmed, detail=r.detail,
                         volume_id=r.volume_id, wipe_state=r.wipe_state)


@router.post("/volumes/{volume_id}/wipe", response_model=VolumePublic,
             status_code=status.HTTP_202_ACCEPTED)
async def wipe_volume(volume_id: Annotated[int, Path(ge=1, le=2**63 - 1)], db: DbDep, wipes: WipesDep
                      ) -> VolumePublic:
    """Order again the wipe of a released volume (one that failed, or was never ordered)."""
    await wipes.retry(volume_id)
    return await run_in_threadpool(load_volume, db, volume_id)


@router.get("/protocol/stats")
def protocol_stats(listener: ListenerDep, request: Request) -> dict[str, int]:
    """Counters of the auto-configuration listener (received, dropped by reason, retransmits...)
    and, when it runs, of the SNMP notification receiver (snmp_*: received, accepted,
    rejected and ignored by reason)."""
    snmp = getattr(request.app.state, "snmp", None)
    return {**listener.stats, **(snmp.stats if snmp is not None else {"snmp_listening": 0})}
