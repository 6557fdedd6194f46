"""REST routes of mirrors (a volume pair on two units, one RAID1 on the host), their health, the
replacement of a failed member, and a host takeover. Hosts see and change only their own."""

import logging
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from dvsan.errors import NotFound
from station.api.deps import BusDep, Caller, DbDep, PusherDep, TasksDep, WipesDep
from station.api.routes.assignments import assignment_public
from station.api.routes.tasks import TASK_ACCEPTED, Wait, accepted, settle
from station.api.schemas import (
    IdPath,
    MirrorCreate,
    MirrorHealth,
    MirrorPublic,
    MirrorReleasePublic,
    MirrorReplace,
    NamePath,
    ReleasePublic,
    Takeover,
    TaskPublic,
)
from station.db import Database
from station.db.tables import MirrorRow
from station.services import auth, mirrors
from station.services.chap import ChapVault
from station.services.exports import ExportPusher
from station.services.tasks import TaskContext, TaskService
from station.services.wipes import WipeService

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["mirrors"])


def mirror_public(m: MirrorRow, who: auth.Principal | None = None, vault: ChapVault | None = None) -> MirrorPublic:
    members = [assignment_public(a, who, vault) for a in m.members]
    return MirrorPublic(id=m.id, host=m.host_name, requested_bytes=m.requested_bytes,
                        size_bytes=min((x.size_bytes for x in members), default=0), state=m.state,
                        sync_percent=m.sync_percent, detail=m.detail, reported_at=m.reported_at,
                        created_at=m.created_at, members=members)


def _visible(s: Session, who: auth.Principal, mirror_id: int) -> MirrorRow:
    """The mirror if `who` may see it; 404 otherwise (a host learns nothing of others')."""
    m = mirrors.get(s, mirror_id)
    if not (who.may("pool.read") or (who.may("host.storage") and m.host_name == who.name)):
        who.require("host.storage")          # a principal with neither permission: 403
        raise NotFound(f"no mirror with id {mirror_id}")
    return m


def load_mirror(db: Database, who: auth.Principal, mirror_id: int, vault: ChapVault | None) -> MirrorPublic:
    with db.session() as s:
        return mirror_public(_visible(s, who, mirror_id), who, vault)


@router.get("/mirrors", response_model=list[MirrorPublic])
def list_mirrors(db: DbDep, who: Caller, pusher: PusherDep, host: str | None = None) -> list[MirrorPublic]:
    """Every mirror (a host token: its own only), with its members."""
    if not who.may("pool.read"):
        who.require("host.storage")
        host = who.name
    with db.session() as s:
        return [mirror_public(m, who, pusher.vault) for m in mirrors.list_all(s, host)]


@router.get("/mirrors/{mirror_id}", response_model=MirrorPublic)
def get_mirror(mirror_id: IdPath, db: DbDep, who: Caller, pusher: PusherDep) -> MirrorPublic:
    return load_mirror(db, who, mirror_id, pusher.vault)


@router.post("/mirrors", response_model=MirrorPublic, status_code=status.HTTP_201_CREATED,
             responses=TASK_ACCEPTED)
async def create_mirror(body: MirrorCreate, db: DbDep, pusher: PusherDep, tasks: TasksDep, who: Caller,
                        request: Request, wait: Wait = None) -> Any:
    """Give a host a mirrored volume, as a task (`assign` on `/hosts/NAME`): two free volumes of at
    least `size_bytes` on two different units (best fit), each exported to the host; both confirmed by
    their units, or the whole mirror is undone. With `?wait=SECONDS`: 201 with the mirror (409 no
    two units each have one, 503 a unit did not confirm); else 202 with the task. Who may ask:
    as for `POST /api/v1/assignments`."""
    def check() -> None:
        with db.session() as s:
            auth.check_host_request(s, who, body.host, body.initiator_iqn)
            if who.kind != "host" and not who.may_somewhere("assignments.write", "units", "volumes"):
                who.require("assignments.write", f"/hosts/{body.host}")
    await run_in_threadpool(check)
    scoped = not who.may("assignments.write", f"/hosts/{body.host}") and who.kind != "host"

    def allowed(*paths: str) -> bool:
        return who.may("assignments.write", *paths)

    async def work(ctx: TaskContext) -> dict[str, Any]:
        mid, members = await mirrors.create(db, pusher, body.host, body.initiator_iqn, body.host_address,
                                            body.size, ctx, allowed if scoped else None, body.mutual_chap)
        log.info("mirror %d made for %s by %s", mid, body.host, who)
        return {"mirror": mid, "members": [m.id for m in members], "units": [m.unit for m in members],
                "devices": [m.device for m in members]}
    task = await tasks.submit("assign", f"/hosts/{body.host}", str(who), work, host=body.host)
    audit = {"task": task["id"], "host": body.host, "initiator_iqn": body.initiator_iqn,
             "size_bytes": body.size, "mirrored": True}
    request.state.audit = audit
    done = await settle(tasks, task, wait)
    if done is None:
        return accepted(task if not wait else await tasks.get(task["id"]))
    audit.update(done["result"])
    out = await run_in_threadpool(load_mirror, db, who, done["result"]["mirror"], pusher.vault)
    return JSONResponse(status_code=201, content=out.model_dump(mode="json"),
                        headers={"Location": f"/api/v1/mirrors/{out.id}", "Dvsan-Task": str(task["id"])})


def _writable(s: Session, who: auth.Principal, mirror_id: int, *, host_may: bool) -> MirrorRow:
    """The mirror if `who` may change it: its own host (`host_may`), or an operator of its host."""
    m = _visible(s, who, mirror_id)
    if not (host_may and who.kind == "host"):
        who.require("assignments.write", f"/hosts/{m.host_name}")
    return m


@router.delete("/mirrors/{mirror_id}", response_model=MirrorReleasePublic, responses=TASK_ACCEPTED)
async def delete_mirror(mirror_id: IdPath, db: DbDep, pusher: PusherDep, wipes: WipesDep, tasks: TasksDep,
                        who: Caller, request: Request, wait: Wait = None) -> Any:
    """Release a mirror, as a task (`release` on `/mirrors/ID`): every member goes through the
    normal release (export dropped, volume wiped), then the mirror. `?wait=SECONDS`: 200."""
    def check() -> str:
        with db.session() as s:
            m = _writable(s, who, mirror_id, host_may=True)
            mirrors.check_release(who, list(m.members))
            return m.host_name
    host = await run_in_threadpool(check)

    async def work(ctx: TaskContext) -> dict[str, Any]:
        out = await mirrors.release(db, pusher, wipes, mirror_id, ctx, str(who))
        log.info("mirror %d released by %s", mirror_id, who)
        return {"id": mirror_id, "members": [
            {"id": r.id, "unit": r.unit, "unit_confirmed": r.unit_confirmed, "detail": r.detail,
             "volume_id": r.volume_id, "wipe_state": r.wipe_state, "wipe_task": r.wipe_task} for r in out]}
    task = await tasks.submit("release", f"/mirrors/{mirror_id}", str(who), work, host=host)
    request.state.audit = {"task": task["id"], "mirror": mirror_id}
    done = await settle(tasks, task, wait)
    if done is None:
        return accepted(task if not wait else await tasks.get(task["id"]))
    return MirrorReleasePublic(id=mirror_id, members=[ReleasePublic(**r) for r in done["result"]["members"]])


async def replace_task(tasks: TaskService, db: Database, pusher: ExportPusher, wipes: WipeService,
                       mirror_id: int, host: str, member: int | None, requested_by: str) -> dict[str, Any]:
    """The `replace` task of a mirror (joined if one is queued or running on it already)."""
    async def work(ctx: TaskContext) -> dict[str, Any]:
        return await mirrors.replace(db, pusher, wipes, mirror_id, member, ctx, requested_by)
    return await tasks.submit("replace", f"/mirrors/{mirror_id}", requested_by, work, host=host, join=True)


@router.put("/mirrors/{mirror_id}/health", response_model=MirrorPublic)
async def report_health(mirror_id: IdPath, body: MirrorHealth, db: DbDep, pusher: PusherDep, wipes: WipesDep,
                        tasks: TasksDep, bus: BusDep, who: Caller, request: Request) -> MirrorPublic:
    """A host reports its array (its own mirror only; or an operator of its host): the mirror's
    state, sync progress and each member's state by assignment id (unknown ids: 422). With the
    station's `auto_replace`, a member reported faulty or missing on a unit that is down starts
    its replacement (one task, never two)."""
    members: dict[int, str] = {int(k): v for k, v in body.members.items()}

    def record() -> tuple[bool, bool, MirrorPublic]:
        with db.session() as s:
            m = _writable(s, who, mirror_id, host_may=True)
            changed = mirrors.record_health(s, mirror_id, body.state, body.sync_percent, body.detail, members)
            s.flush()
            return changed, mirrors.needs_auto_replace(s, mirror_id), mirror_public(m, who, pusher.vault)
    changed, failing, out = await run_in_threadpool(record)
    audit: dict[str, Any] = {"mirror": mirror_id, "state": body.state, "members": body.members,
                             "changed": changed}
    request.state.audit = audit
    if changed:
        bus.publish("mirror", {"id": mirror_id, "host": out.host, "state": out.state,
                               "sync_percent": out.sync_percent, "detail": out.detail,
                               "members": {str(x.id): x.member_state for x in out.members}}, out.host)
    if failing and getattr(request.app.state, "auto_replace", False):
        t = await replace_task(tasks, db, pusher, wipes, mirror_id, out.host, None, "station")
        audit["replace_task"] = t["id"]
        log.warning("mirror %d: a member is %s on a unit that is down: replacement task %d",
                    mirror_id, "faulty or missing", t["id"])
    return out


@router.post("/mirrors/{mirror_id}/replace", responses={
    **TASK_ACCEPTED, 200: {"model": TaskPublic, "description": "the replacement, ended (with `?wait`)"}})
async def replace_member(mirror_id: IdPath, db: DbDep, pusher: PusherDep, wipes: WipesDep, tasks: TasksDep,
                         who: Caller, request: Request, wait: Wait = None,
                         body: Annotated[MirrorReplace | None, Body()] = None) -> Any:
    """Replace a failed member, as a task (`replace` on `/mirrors/ID`; operators): a free volume of
    at least the mirror's size on a unit holding no member of it is exported to the mirror's host;
    once its unit confirmed, the old member is released (dropped, wiped; a unit that is down does
    both when it next reports). Default member: one on a unit that is not online, else one its host
    reports faulty or missing; none: 409. `?wait=SECONDS`: 200 with the ended task."""
    member = body.member if body is not None else None

    def check() -> str:
        with db.session() as s:
            m = _writable(s, who, mirror_id, host_may=False)
            mirrors.failed_member(s, mirror_id, member)
            return m.host_name
    host = await run_in_threadpool(check)
    task = await replace_task(tasks, db, pusher, wipes, mirror_id, host, member, str(who))
    request.state.audit = {"task": task["id"], "mirror": mirror_id, "member": member}
    done = await settle(tasks, task, wait)
    if done is None:
        return accepted(task if not wait else await tasks.get(task["id"]))
    return TaskPublic(**done)


@router.post("/hosts/{name}/takeover", responses={
    **TASK_ACCEPTED, 200: {"model": TaskPublic, "description": "the takeover, ended (with `?wait`)"}})
async def take_over(name: NamePath, body: Takeover, db: DbDep, pusher: PusherDep, tasks: TasksDep, who: Caller,
                    request: Request, wait: Wait = None) -> Any:
    """A spare host takes over a failed host's storage, as a task (`takeover` on `/hosts/NAME`;
    operators of both hosts). First every assignment of NAME is fenced (its export withheld, its
    target dropped even under live sessions) and every unit involved must confirm (else the task
    fails, leaving them fenced: run it again); then each is moved to `to` (its first initiator,
    its address if known, fresh CHAP secrets) with NAME's mirrors. `?wait=SECONDS`: 200 with the
    ended task."""
    who.require("assignments.write", f"/hosts/{name}")
    who.require("assignments.write", f"/hosts/{body.to}")

    def check() -> None:
        with db.session() as s:
            mirrors.check_takeover(s, name, body.to)
    await run_in_threadpool(check)

    async def work(ctx: TaskContext) -> dict[str, Any]:
        return await mirrors.takeover(db, pusher, name, body.to, ctx)
    task = await tasks.submit("takeover", f"/hosts/{name}", str(who), work, host=name)
    request.state.audit = {"task": task["id"], "from": name, "to": body.to}
    done = await settle(tasks, task, wait)
    if done is None:
        return accepted(task if not wait else await tasks.get(task["id"]))
    return TaskPublic(**done)
