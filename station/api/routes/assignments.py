"""REST routes of assignments: who holds which volume. Hosts see and change only their own."""

import logging
import time
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from dvsan.errors import NotFound
from dvsan.model import mutual_aad
from station.api.deps import Caller, DbDep, MonitorDep, PusherDep, TasksDep, WipesDep
from station.api.routes.tasks import TASK_ACCEPTED, Wait, accepted, settle
from station.api.schemas import AssignmentCreate, AssignmentPublic, IdPath, ReleasePublic
from station.db import Database
from station.db.tables import AssignmentRow
from station.services import assignments, auth, mirrors
from station.services.chap import ChapVault
from station.services.stats import StatsService
from station.services.tasks import TaskContext

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["assignments"])


def assignment_public(a: AssignmentRow, who: auth.Principal | None = None,
                      vault: ChapVault | None = None) -> AssignmentPublic:
    """The assignment as `who` may see it: its CHAP secret only for its own host or an operator."""
    v = a.volume
    u = v.unit
    secret = mutual = None
    if a.chap_user and vault is not None and who is not None and (
            who.may("assignments.write") or (who.may("host.storage") and a.host_name == who.name)):
        secret = vault.reveal(a.target_iqn, a.chap_secret_sealed)
        if a.mutual_user:
            mutual = vault.reveal(mutual_aad(a.target_iqn), a.mutual_secret_sealed)
    return AssignmentPublic(chap_user=a.chap_user, chap_secret=secret, mutual_user=a.mutual_user,
                            mutual_secret=mutual,
        id=a.id, host=a.host_name, initiator_iqn=a.initiator_iqn, host_address=a.host_address,
        requested_bytes=a.requested_bytes, volume_id=v.id, unit=u.name, unit_address=u.portal_address,
        unit_dns_name=u.dns_name, portal_port=u.portal_port, target_iqn=a.target_iqn, lun=a.lun,
        device=v.device, size_bytes=v.size_bytes, start_lba=v.start_lba, end_lba=v.end_lba,
        block_size=v.block_size, volume_state=v.state, created_at=a.created_at, wwn=a.wwn,
        export_state=a.export_state, export_detail=a.export_detail, volume_detail=v.detail,
        mirror_id=a.mirror_id, member_state=a.member_state, fenced=a.fenced)


def _visible(s: object, who: auth.Principal, assignment_id: int) -> AssignmentRow:
    """The assignment if `who` may see it; 404 otherwise (a host learns nothing of others')."""
    a = assignments.get(s, assignment_id)  # type: ignore[arg-type]
    if not auth.may_see_assignment(who, a):
        who.require("host.storage")          # a principal with neither permission: 403
        raise NotFound(f"no assignment with id {assignment_id}")
    return a


def load_assignment(db: Database, who: auth.Principal, assignment_id: int,
                    vault: ChapVault | None = None) -> AssignmentPublic:
    with db.session() as s:
        return assignment_public(_visible(s, who, assignment_id), who, vault)


def with_sessions(out: AssignmentPublic, monitor: StatsService) -> AssignmentPublic:
    out.sessions = monitor.store.sessions_of(out.unit, out.device, time.time() * 1000)
    return out


@router.get("/assignments", response_model=list[AssignmentPublic])
def list_assignments(db: DbDep, who: Caller, pusher: PusherDep, monitor: MonitorDep,
                     host: str | None = None) -> list[AssignmentPublic]:
    """Every assignment (a host token: its own only), with whether its host is logged in."""
    if not who.may("pool.read"):
        who.require("host.storage")
        host = who.name
    with db.session() as s:
        return [with_sessions(assignment_public(a, who, pusher.vault), monitor)
                for a in assignments.list_all(s, host)]


@router.get("/assignments/{assignment_id}", response_model=AssignmentPublic)
def get_assignment(assignment_id: IdPath, db: DbDep, who: Caller, pusher: PusherDep,
                   monitor: MonitorDep) -> AssignmentPublic:
    return with_sessions(load_assignment(db, who, assignment_id, pusher.vault), monitor)


@router.post("/assignments", response_model=AssignmentPublic, status_code=status.HTTP_201_CREATED,
             responses=TASK_ACCEPTED)
async def create_assignment(body: AssignmentCreate, db: DbDep, pusher: PusherDep, tasks: TasksDep,
                            who: Caller, request: Request, wait: Wait = None) -> Any:
    """Give a host the smallest free volume that fits, as a task (`assign` on `/hosts/NAME`).

    With `?wait=SECONDS` it answers once the unit exports the volume to the host (201 with the
    assignment, or the error: 409 none fits, 503 the unit did not confirm); otherwise, or if it
    has not ended by then, 202 with the task. Operators may ask for any host; a host token only
    for its own host, with an initiator name enrolled for it. Requests for one host run one after
    the other."""
    def check() -> None:
        with db.session() as s:
            auth.check_host_request(s, who, body.host, body.initiator_iqn)
            if who.kind != "host" and not who.may_somewhere("assignments.write", "units", "volumes"):
                # granted hosts only: the storage of those hosts, no other's
                who.require("assignments.write", f"/hosts/{body.host}")
            if body.volume_id is not None:          # an operator's choice of one volume
                if not who.may_somewhere("assignments.write"):
                    who.require("assignments.write")
                who.require("assignments.write", *auth.volume_paths(
                    assignments.check_assignable(s, body.volume_id)))
    await run_in_threadpool(check)
    # an operator by grant on the host (its storage is theirs to use) takes from the whole pool, as
    # the host itself would; one by grant on units or volumes only among the volumes they cover
    scoped = not who.may("assignments.write", f"/hosts/{body.host}") and who.kind != "host"

    def allowed(*paths: str) -> bool:
        return who.may("assignments.write", *paths)

    async def work(ctx: TaskContext) -> dict[str, Any]:
        out = await assignments.assign(db, pusher, body.host, body.initiator_iqn, body.host_address,
                                       body.size_bytes, ctx, allowed if scoped else None, body.volume_id,
                                       body.mutual_chap)
        log.info("assignment %d made for %s by %s", out.id, body.host, who)
        return {"assignment": out.id, "unit": out.unit, "device": out.device, "target_iqn": out.target_iqn}
    task = await tasks.submit("assign", f"/hosts/{body.host}", str(who), work, host=body.host)
    audit = {"task": task["id"], "host": body.host, "initiator_iqn": body.initiator_iqn,
             "size_bytes": body.size_bytes}
    request.state.audit = audit
    done = await settle(tasks, task, wait)
    if done is None:
        return accepted(task if not wait else await tasks.get(task["id"]))
    audit.update(done["result"])
    out = await run_in_threadpool(load_assignment, db, who, done["result"]["assignment"], pusher.vault)
    return JSONResponse(status_code=201, content=out.model_dump(mode="json"),
                        headers={"Location": f"/api/v1/assignments/{out.id}", "Dvsan-Task": str(task["id"])})


@router.delete("/assignments/{assignment_id}", response_model=ReleasePublic, responses=TASK_ACCEPTED)
async def delete_assignment(assignment_id: IdPath, db: DbDep, pusher: PusherDep, wipes: WipesDep,
                            tasks: TasksDep, who: Caller, request: Request, wait: Wait = None) -> Any:
    """Release a volume, as a task (`release` of `/assignments/ID`, one at a time per volume): the
    assignment goes, the unit drops the export and zeroes the volume (a `wipe` task follows it);
    it is free again once the wipe has succeeded. With `?wait=SECONDS`: 200 with the release."""
    def check() -> tuple[int, str]:
        with db.session() as s:
            a = _visible(s, who, assignment_id)       # a host: its own only
            mirrors.check_release(who, [a])
            if who.kind != "host":
                who.require("assignments.write", *auth.volume_paths(a.volume), f"/hosts/{a.host_name}")
            return a.volume_id, a.host_name
    vid, host = await run_in_threadpool(check)

    async def work(ctx: TaskContext) -> dict[str, Any]:
        r = await assignments.release(db, pusher, wipes, assignment_id, ctx, str(who))
        log.info("assignment %d released by %s", assignment_id, who)
        return {"id": r.id, "unit": r.unit, "unit_confirmed": r.unit_confirmed, "detail": r.detail,
                "volume_id": r.volume_id, "wipe_state": r.wipe_state, "wipe_task": r.wipe_task}
    task = await tasks.submit("release", f"/assignments/{assignment_id}", str(who), work, host=host,
                              lock=f"/volumes/{vid}")
    audit: dict[str, Any] = {"task": task["id"], "assignment": assignment_id, "volume": vid}
    request.state.audit = audit
    done = await settle(tasks, task, wait)
    if done is None:
        return accepted(task if not wait else await tasks.get(task["id"]))
    audit.update({"unit": done["result"]["unit"], "wipe": done["result"]["wipe_state"]})
    return ReleasePublic(**done["result"])
