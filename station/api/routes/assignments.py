"""REST routes of assignments: who holds which volume. Hosts see and change only their own."""

import logging

from fastapi import APIRouter, Request, status
from starlette.concurrency import run_in_threadpool

from dvsan.errors import NotFound
from station.api.deps import Caller, DbDep, PusherDep, WipesDep
from station.api.schemas import AssignmentCreate, AssignmentPublic, IdPath, ReleasePublic
from station.db import Database
from station.db.tables import AssignmentRow
from station.services import assignments, auth
from station.services.chap import ChapVault

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["assignments"])


def assignment_public(a: AssignmentRow, who: auth.Principal | None = None,
                      vault: ChapVault | None = None) -> AssignmentPublic:
    """The assignment as `who` may see it: its CHAP secret only for its own host or an operator."""
    v = a.volume
    u = v.unit
    secret = None
    if a.chap_user and vault is not None and who is not None and (
            who.may("assignments.write") or (who.may("host.storage") and a.host_name == who.name)):
        secret = vault.reveal(a.target_iqn, a.chap_secret_sealed)
    return AssignmentPublic(chap_user=a.chap_user, chap_secret=secret,
        id=a.id, host=a.host_name, initiator_iqn=a.initiator_iqn, host_address=a.host_address,
        requested_bytes=a.requested_bytes, volume_id=v.id, unit=u.name, unit_address=u.portal_address,
        unit_dns_name=u.dns_name, portal_port=u.portal_port, target_iqn=a.target_iqn, lun=a.lun,
        device=v.device, size_bytes=v.size_bytes, start_lba=v.start_lba, end_lba=v.end_lba,
        block_size=v.block_size, volume_state=v.state, created_at=a.created_at, wwn=a.wwn,
        export_state=a.export_state, export_detail=a.export_detail, volume_detail=v.detail)


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


@router.get("/assignments", response_model=list[AssignmentPublic])
def list_assignments(db: DbDep, who: Caller, pusher: PusherDep, host: str | None = None) -> list[AssignmentPublic]:
    """Every assignment (a host token: its own only)."""
    if not who.may("pool.read"):
        who.require("host.storage")
        host = who.name
    with db.session() as s:
        return [assignment_public(a, who, pusher.vault) for a in assignments.list_all(s, host)]


@router.get("/assignments/{assignment_id}", response_model=AssignmentPublic)
def get_assignment(assignment_id: IdPath, db: DbDep, who: Caller, pusher: PusherDep) -> AssignmentPublic:
    return load_assignment(db, who, assignment_id, pusher.vault)


@router.post("/assignments", response_model=AssignmentPublic, status_code=status.HTTP_201_CREATED)
async def create_assignment(body: AssignmentCreate, db: DbDep, pusher: PusherDep, who: Caller,
                            request: Request) -> AssignmentPublic:
    """Give a host the smallest free volume that fits; answers once the unit exports it to the host.

    Operators may ask for any host; a host token only for its own host, with an initiator name
    enrolled for it."""
    def check() -> None:
        with db.session() as s:
            auth.check_host_request(s, who, body.host, body.initiator_iqn)
    await run_in_threadpool(check)
    out = await assignments.assign(db, pusher, body.host, body.initiator_iqn, body.host_address,
                                   body.size_bytes)
    log.info("assignment %d made for %s by %s", out.id, body.host, who)
    request.state.audit = {"assignment": out.id, "host": body.host, "initiator_iqn": body.initiator_iqn,
                           "size_bytes": body.size_bytes, "unit": out.unit, "device": out.device}
    return await run_in_threadpool(load_assignment, db, who, out.id, pusher.vault)


@router.delete("/assignments/{assignment_id}", response_model=ReleasePublic)
async def delete_assignment(assignment_id: IdPath, db: DbDep, pusher: PusherDep, wipes: WipesDep,
                            who: Caller, request: Request) -> ReleasePublic:
    """Release a volume: the assignment goes, the unit drops the export and zeroes the volume;
    it is free again once the wipe has succeeded (`GET /api/v1/volumes` shows its progress)."""
    def check() -> None:
        with db.session() as s:
            _visible(s, who, assignment_id)
            if not who.may("assignments.write"):
                who.require("host.storage")
    await run_in_threadpool(check)
    r = await assignments.release(db, pusher, wipes, assignment_id)
    log.info("assignment %d released by %s", assignment_id, who)
    request.state.audit = {"assignment": r.id, "unit": r.unit, "volume": r.volume_id, "wipe": r.wipe_state}
    return ReleasePublic(id=r.id, unit=r.unit, unit_confirmed=r.unit_confirmed, detail=r.detail,
                         volume_id=r.volume_id, wipe_state=r.wipe_state)
