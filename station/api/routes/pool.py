"""REST routes of the pool: units, volumes (with their wipes), the protocol listeners' counters."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from starlette.concurrency import run_in_threadpool

from dvsan.errors import NotFound
from station.api.deps import Caller, DbDep, ListenerDep, Reader, WipesDep
from station.api.schemas import IdPath, NamePath, TaskPublic, UnitPublic, VolumePublic
from station.db import Database
from station.db.tables import VolumeRow
from station.services import auth, pool

router = APIRouter(prefix="/api/v1", tags=["pool"])


@router.get("/units", response_model=list[UnitPublic])
def list_units(db: DbDep, _: Reader) -> list[UnitPublic]:
    with db.session() as s:
        return [UnitPublic.model_validate(u) for u in pool.list_units(s)]


@router.get("/units/{name}", response_model=UnitPublic)
def get_unit(name: NamePath, db: DbDep, _: Reader) -> UnitPublic:
    with db.session() as s:
        return UnitPublic.model_validate(pool.get_unit(s, name))


@router.get("/volumes", response_model=list[VolumePublic])
def list_volumes(db: DbDep, _: Reader, unit: str | None = None,
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


@router.post("/volumes/{volume_id}/wipe", response_model=TaskPublic, status_code=status.HTTP_202_ACCEPTED)
async def wipe_volume(volume_id: IdPath, db: DbDep, wipes: WipesDep, who: Caller, request: Request) -> TaskPublic:
    """Order again the wipe of a released volume (one that failed, or was never ordered): a `wipe`
    task on `/volumes/ID`, whose progress follows the unit's reports (`GET /api/v1/events`).
    409 if the volume is assigned, already clean, or busy with another task."""
    def check() -> None:
        with db.session() as s:
            v = s.get(VolumeRow, volume_id)
            if v is None:
                if not who.may_somewhere("volumes.wipe"):
                    who.require("volumes.wipe")
                raise NotFound(f"no volume with id {volume_id}")
            who.require("volumes.wipe", *auth.volume_paths(v))
    await run_in_threadpool(check)
    task = await wipes.retry(volume_id, str(who))
    assert isinstance(task, dict)
    request.state.audit = {"task": task["id"], "volume": volume_id}
    return TaskPublic(**task)


@router.get("/protocol/stats")
def protocol_stats(listener: ListenerDep, request: Request, _: Reader) -> dict[str, int]:
    """Counters of the auto-configuration listener (received, dropped by reason, retransmits...)
    and, when it runs, of the SNMP notification receiver (snmp_*: received, accepted,
    rejected and ignored by reason)."""
    snmp = getattr(request.app.state, "snmp", None)
    return {**listener.stats, **(snmp.stats if snmp is not None else {"snmp_listening": 0})}
