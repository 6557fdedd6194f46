"""REST routes of units' disks: their partition tables, and a new layout as a `partition` task."""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dvsan.errors import Forbidden
from station.api.deps import Caller, DbDep, TasksDep
from station.api.routes.tasks import TASK_ACCEPTED, Wait, accepted, settle
from station.api.schemas import DiskLayout, DiskPublic, NamePath, TaskPublic
from station.services import disks, pool
from station.services.disks import PartitionService

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["disks"])
DiskPath = Annotated[str, Path(pattern=r"^[a-z][a-z0-9-]{0,31}$", description="a disk's kernel name (vdb, sdc, nvme0n1)")]


def get_partitions(request: Request) -> PartitionService:
    return request.app.state.partitions  # type: ignore[no-any-return]


PartitionsDep = Annotated[PartitionService, Depends(get_partitions)]


@router.get("/units/{name}/disks", response_model=list[DiskPublic])
def list_disks(name: NamePath, db: DbDep, who: Caller) -> list[DiskPublic]:
    """A unit's disks as it last reported them: size, label, partitions with start/end LBA and
    size, free regions, and what is in the way of changing each (mounted, swap, held, exported,
    assigned). A caller sees the disks its role or grants cover (`/units/UNIT/disks/DISK`)."""
    if not who.may_somewhere("pool.read"):
        who.require("pool.read")
    with db.session() as s:
        pool.get_unit(s, name)
        out = [DiskPublic(**d) for d in disks.view(s, name)
               if who.may("pool.read", f"/units/{name}", f"/units/{name}/disks/{d['name']}")]
    if not out and not who.may("pool.read", f"/units/{name}"):
        raise Forbidden(f"{who.kind} {who.name!r} (role {who.role}) lacks the permission 'pool.read' "
                        f"on /units/{name}")
    return out


@router.post("/units/{name}/disks/{disk}/layout", response_model=TaskPublic, status_code=202,
             responses=TASK_ACCEPTED)
async def change_layout(name: NamePath, disk: DiskPath, body: DiskLayout, db: DbDep, tasks: TasksDep,
                        partitions: PartitionsDep, who: Caller, request: Request, wait: Wait = None) -> Any:
    """Change a disk's partition table, as a `partition` task on `/units/UNIT/disks/DISK`: a new
    empty GPT label (`label`), partitions deleted by number (`delete`), partitions created by size
    (`create`; sizes rounded up to whole MiB, placed in the first free region that fits).

    The unit checks at the moment of the change that nothing is in the way (never the system disk;
    never a partition mounted, swap, held by dm/md/LVM, exported by LIO, assigned or being wiped)
    and refuses naming what is; a change is all or nothing. 202 with the task; with
    `?wait=SECONDS` the ended task (200), or its error: 409 refused or failed, 503 the unit is not
    online or did not answer. 409 at once if another task holds the disk."""
    obj = f"/units/{name}/disks/{disk}"
    if not who.may_somewhere("disks.write"):
        who.require("disks.write")
    who.require("disks.write", obj)

    def unit_exists() -> None:
        with db.session() as s:
            pool.get_unit(s, name)
    await run_in_threadpool(unit_exists)
    layout = body.to_wire()
    task = await partitions.submit(name, disk, layout, str(who))
    request.state.audit = {"task": task["id"], "unit": name, "disk": disk, "layout": layout}
    done = await settle(tasks, task, wait)
    if done is None:
        return accepted(task if not wait else await tasks.get(task["id"]))
    return JSONResponse(status_code=200, content=TaskPublic(**done).model_dump(mode="json"),
                        headers={"Location": f"/api/v1/tasks/{done['id']}"})
