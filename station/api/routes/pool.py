"""REST routes of the pool: units, volumes (with their wipes), the protocol listeners' counters."""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from dvsan.errors import NotFound
from station.api.deps import Caller, DbDep, ListenerDep, Reader, TasksDep, UnitsDep, WipesDep
from station.api.routes.tasks import TASK_ACCEPTED, Wait, accepted, settle
from station.api.schemas import IdPath, NamePath, TaskPublic, UnitPublic, VolumePublic
from station.db import Database
from station.db.tables import VolumeRow
from station.services import auth, pool
from station.services.tasks import TaskContext

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["pool"])


@router.get("/units", response_model=list[UnitPublic])
def list_units(db: DbDep, _: Reader) -> list[UnitPublic]:
    with db.session() as s:
        return [UnitPublic.model_validate(u) for u in pool.list_units(s)]


@router.get("/units/{name}", response_model=UnitPublic)
def get_unit(name: NamePath, db: DbDep, _: Reader) -> UnitPublic:
    with db.session() as s:
        return UnitPublic.model_validate(pool.get_unit(s, name))


class UnitRemoved(BaseModel):
    unit: str
    volumes_removed: int = Field(description="free, clean volumes forgotten with the unit")


@router.delete("/units/{name}", response_model=UnitRemoved, responses=TASK_ACCEPTED)
async def remove_unit(name: NamePath, db: DbDep, units: UnitsDep, tasks: TasksDep, who: Caller,
                      request: Request, wait: Wait = None) -> Any:
    """Take a unit out of the pool, as a task (`remove` of `/units/NAME`): only a unit that is not
    online, holds no assignment and owes no wipe (409 says which); its free volumes are forgotten.
    If its agent announces it again later, it rejoins with new volumes. With `?wait=SECONDS`: 200."""
    def check() -> None:
        with db.session() as s:
            if not who.may_somewhere("units.write"):
                who.require("units.write")
            pool.get_unit(s, name)
            who.require("units.write", f"/units/{name}")
    await run_in_threadpool(check)

    async def work(ctx: TaskContext) -> dict[str, Any]:
        await ctx.progress(0, 1, "removing the unit and its free volumes")
        r = await units.remove(name)
        log.warning("unit %s removed by %s", name, who)
        return {"unit": r.unit, "volumes_removed": r.volumes}
    task = await tasks.submit("remove", f"/units/{name}", str(who), work, busy="refuse")
    audit: dict[str, Any] = {"task": task["id"], "unit": name}
    request.state.audit = audit
    done = await settle(tasks, task, wait)
    if done is None:
        return accepted(task if not wait else await tasks.get(task["id"]))
    audit.update(done["result"])
    return UnitRemoved(unit=done["result"]["unit"], volumes_removed=done["result"]["volumes_removed"])


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


@router.get("/volumes/{volume_id}", response_model=VolumePublic)
def get_volume(volume_id: IdPath, db: DbDep, _: Reader) -> VolumePublic:
    """One volume of the pool, as the listing shows it."""
    return load_volume(db, volume_id)


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
    rejected and ignored by reason), and of the units' monitoring samples (stats_*: accepted,
    refused by reason)."""
    snmp = getattr(request.app.state, "snmp", None)
    monitor = getattr(request.app.state, "monitor", None)
    stats = {f"stats_{k}": v for k, v in monitor.store.counts.items()} if monitor is not None else {}
    return {**listener.stats, **(snmp.stats if snmp is not None else {"snmp_listening": 0}), **stats}
