"""REST routes of unit enrolment (/api/v1/enrolment): list, approve, enrol a key, revoke, forget.

Reading needs `pool.read`; every change needs `enrolment.write` (admins).
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from station.api.deps import DbDep, Reader, UnitAdmin
from station.api.schemas import NamePath, UtcDatetime
from station.db import Database
from station.db.tables import IdentityState
from station.services import enrolment

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1/enrolment", tags=["enrolment"])


@contextmanager
def _changing(request: Request, db: Database, name: str) -> Iterator[Session]:
    """A transaction that changes `name`'s identity: the gate's memory of it is dropped around it."""
    gate = getattr(request.app.state, "enrolment_gate", None)
    if gate is not None:
        gate.forget(name)
    with db.session() as s:
        yield s
    if gate is not None:
        gate.forget(name)


class IdentityPublic(BaseModel):
    """A unit's identity as the station holds it."""

    model_config = ConfigDict(from_attributes=True)

    name: str
    state: str                         # pending | enrolled | revoked
    public_key: str
    fingerprint: str
    first_address: str
    created_at: UtcDatetime
    enrolled_at: UtcDatetime | None
    rotated_at: UtcDatetime | None
    revoked_at: UtcDatetime | None
    # the last other key refused under this name (a second machine, or a new key to approve)
    offered_key: str | None
    offered_fingerprint: str | None
    offered_address: str | None
    offered_at: UtcDatetime | None
    refused_count: int


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fingerprint: str = Field(pattern=r"^SHA256:[A-Za-z0-9+/]{43}$",
                             description="of the key checked on the unit (dvsan-unit-agent --show-key)")


class KeyEnrolment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    public_key: str = Field(pattern=r"^[A-Za-z0-9+/]{43}=$",
                            description="base64 of the raw 32-byte Ed25519 public key")


class StationKeyPublic(BaseModel):
    public_key: str
    fingerprint: str
    policy: str


class RevocationPublic(IdentityPublic):
    volumes_offline: int


@router.get("/station-key", response_model=StationKeyPublic)
def station_key(request: Request, _: Reader) -> StationKeyPublic:
    """The station's public key, for units' `--station-key` (also DATA_DIR/station_identity.pub)."""
    st = request.app.state
    return StationKeyPublic(public_key=st.station_public_key, fingerprint=st.station_fingerprint,
                            policy=st.enrolment_policy)


@router.get("", response_model=list[IdentityPublic])
def list_identities(db: DbDep, _: Reader, state: Annotated[IdentityState | None, Query()] = None) -> list[IdentityPublic]:
    with db.session() as s:
        return [IdentityPublic.model_validate(r) for r in enrolment.list_identities(s, state)]


@router.get("/{name}", response_model=IdentityPublic)
def get_identity(name: NamePath, db: DbDep, _: Reader) -> IdentityPublic:
    with db.session() as s:
        return IdentityPublic.model_validate(enrolment.get_identity(s, name))


@router.post("/{name}/approve", response_model=IdentityPublic)
def approve(name: NamePath, body: Approval, db: DbDep, request: Request, _: UnitAdmin) -> IdentityPublic:
    """Enrol the pending (or other offered) key of `name` whose fingerprint the operator checked."""
    with _changing(request, db, name) as s:
        return IdentityPublic.model_validate(enrolment.approve(s, name, body.fingerprint))


@router.put("/{name}/key", response_model=IdentityPublic)
def enrol_key(name: NamePath, body: KeyEnrolment, db: DbDep, request: Request, _: UnitAdmin) -> IdentityPublic:
    """Enrol, re-enrol or rotate `name` to a key given out of band (pre-enrolment)."""
    with _changing(request, db, name) as s:
        return IdentityPublic.model_validate(enrolment.enrol_key(s, name, body.public_key))


@router.post("/{name}/revoke", response_model=RevocationPublic)
def revoke(name: NamePath, db: DbDep, request: Request, _: UnitAdmin) -> RevocationPublic:
    """Refuse every message of `name` from now on; its volumes go offline, assignments kept."""
    with _changing(request, db, name) as s:
        row, offline = enrolment.revoke(s, name)
        return RevocationPublic.model_validate({**IdentityPublic.model_validate(row).model_dump(),
                                                "volumes_offline": offline})


@router.delete("/{name}", status_code=204)
def forget(name: NamePath, db: DbDep, request: Request, _: UnitAdmin) -> None:
    """Drop a pending announcement nobody will approve."""
    with _changing(request, db, name) as s:
        enrolment.forget_pending(s, name)
