"""Unit enrolment: the one key each unit name must sign with, the site's policy, operator actions.

A unit's first signed message offers its public key (the envelope's `key`). What happens to an
unknown name is the site's policy: `manual` (default) records it as pending until an operator
approves its fingerprint; `first-come` enrols the first key seen (trust on first use, for labs and
sites that enrol in a safe place). An enrolled name accepts only its key; another key under it is
refused and reported (`offered_*`, `refused_count`, a warning in the log), unless the message also
carries a signature by the enrolled key (the unit rotates its own key), or an operator approves
it. A revoked name is refused until an operator enrols a new key for it. See docs/security.md.
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from dvsan.errors import Conflict, IdentityRefused, InvalidInput, NotFound
from dvsan.identity import Ed25519PublicKey, Envelope, decode_public, encode_public, fingerprint
from dvsan.naming import check_unit_name
from dvsan.protocol import Message
from station.db import Database
from station.db.tables import IdentityState, UnitIdentityRow, UnitRow, UnitState
from station.services import pool

log = logging.getLogger(__name__)

Policy = Literal["manual", "first-come"]
POLICIES: tuple[Policy, ...] = ("manual", "first-come")
STATES = tuple(IdentityState)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Admission:
    """What `admit` decided: the key to verify with, or why the sender is refused (after commit)."""

    key: Ed25519PublicKey | None = None
    refusal: IdentityRefused | None = None


def admit(s: Session, env: Envelope, address: str, policy: Policy) -> Admission:
    """Decide whether a message signed as `env.sender` comes from that unit, recording what it learns.

    Returns rather than raises a refusal, so that a pending record or a reported second key is
    committed with the transaction.
    """
    name = env.sender
    try:
        check_unit_name(name)
    except InvalidInput as e:
        return Admission(refusal=IdentityRefused("bad-name", f"sender {name!r}: {e}"))
    offered = env.offered_key
    env.verify(offered)          # whoever it is, it holds the key it offers (nothing recorded otherwise)
    fp = fingerprint(offered)
    row = s.get(UnitIdentityRow, name)
    now = _now()
    if row is None:
        row = UnitIdentityRow(name=name, public_key=env.public_key, fingerprint=fp, state=IdentityState.PENDING,
                              first_address=address[:64], created_at=now, refused_count=0)
        s.add(row)
        if policy == "first-come":
            row.state, row.enrolled_at = "enrolled", now
            log.warning("unit %s enrolled on first contact from %s with key %s (policy first-come)",
                        name, address, fp)
            return Admission(key=offered)
        log.warning("unit %s from %s is not enrolled: pending, key %s; an operator must approve it",
                    name, address, fp)
        return Admission(refusal=_pending(name, fp))
    if row.public_key == env.public_key:
        if row.state == IdentityState.ENROLLED:
            return Admission(key=offered)
        if row.state == IdentityState.PENDING:
            return Admission(refusal=_pending(name, fp))
        return Admission(refusal=IdentityRefused("revoked", f"unit {name}'s key {fp} is revoked"))
    # Another key under this name.
    if row.state == IdentityState.ENROLLED and env.previous is not None:
        try:
            env.verify_previous(decode_public(row.public_key))
        except IdentityRefused:
            pass
        else:
            log.warning("unit %s rotated its key: %s -> %s (signed by the old key)", name, row.fingerprint, fp)
            row.public_key, row.fingerprint, row.rotated_at = env.public_key, fp, now
            if row.offered_key == env.public_key:
                _clear_offer(row)
            return Admission(key=offered)
    row.offered_key, row.offered_fingerprint = env.public_key, fp
    row.offered_address, row.offered_at = address[:64], now
    row.refused_count += 1
    log.warning("unit name %s is %s with key %s: refused a message from %s signed by another key %s "
                "(a second machine under this name, or a new key an operator must approve)",
                name, row.state, row.fingerprint, address, fp)
    return Admission(refusal=IdentityRefused(
        "key-mismatch", f"unit name {name} is {row.state} with another key ({row.fingerprint}); "
                        f"key {fp} is refused and reported to the operator"))


def _pending(name: str, fp: str) -> IdentityRefused:
    return IdentityRefused("pending", f"unit {name} is waiting for an operator to approve its key {fp} "
                                      f"(POST /api/v1/enrolment/{name}/approve)")


def _clear_offer(row: UnitIdentityRow) -> None:
    row.offered_key = row.offered_fingerprint = row.offered_address = None
    row.offered_at = None


class EnrolmentGate:
    """The station endpoint's verifier: the enrolled key of a message's sender, or a refusal.

    Enrolled keys are kept in memory once seen, so that a heartbeat or an ACK costs no database
    transaction; every operator action on a name (station/api/routes/enrolment.py) calls `forget(name)`
    before and after its transaction. Anything but "the enrolled key, again" goes to `admit`.
    """

    def __init__(self, db: Database, policy: Policy = "manual"):
        if policy not in POLICIES:
            raise InvalidInput(f"enrolment policy must be one of {', '.join(POLICIES)}, not {policy!r}")
        self.db = db
        self.policy = policy
        self._enrolled: dict[str, tuple[str, Ed25519PublicKey]] = {}

    def forget(self, name: str) -> None:
        self._enrolled.pop(name, None)

    async def __call__(self, env: Envelope, msg: Message, peer: tuple[str, int]) -> Ed25519PublicKey:
        known = self._enrolled.get(env.sender)
        if known is not None and known[0] == env.public_key and env.previous is None:
            return known[1]

        def tx() -> tuple[Admission, bool]:
            with self.db.session() as s:
                adm = admit(s, env, peer[0], self.policy)
                row = s.get(UnitIdentityRow, env.sender) if adm.key is not None else None
                return adm, row is not None and row.state == IdentityState.ENROLLED and row.public_key == env.public_key

        adm, enrolled = await asyncio.to_thread(tx)
        if adm.refusal is not None:
            raise adm.refusal
        assert adm.key is not None
        if enrolled:
            self._enrolled[env.sender] = (env.public_key, adm.key)
        return adm.key


# --- operator actions (REST: station/api/routes/enrolment.py) -------------------------------------------
def list_identities(s: Session, state: str | None = None) -> list[UnitIdentityRow]:
    if state is not None and state not in STATES:
        raise InvalidInput(f"state must be one of {', '.join(STATES)}")
    q = select(UnitIdentityRow).order_by(UnitIdentityRow.name)
    if state is not None:
        q = q.where(UnitIdentityRow.state == state)
    return list(s.scalars(q))


def get_identity(s: Session, name: str) -> UnitIdentityRow:
    row = s.get(UnitIdentityRow, name)
    if row is None:
        raise NotFound(f"no unit named {name!r} has announced itself or been enrolled")
    return row


def approve(s: Session, name: str, fp: str) -> UnitIdentityRow:
    """Enrol the key with fingerprint `fp` that `name` has offered (pending, or another key offered).

    The fingerprint is required so that the operator approves the key they checked on the unit
    (`dvsan-unit-agent --show-key`), not whatever announced itself last.
    """
    row = get_identity(s, name)
    now = _now()
    if row.state == IdentityState.PENDING and fp == row.fingerprint:
        row.state, row.enrolled_at = "enrolled", now
    elif row.offered_fingerprint is not None and fp == row.offered_fingerprint:
        assert row.offered_key is not None
        if row.state == IdentityState.ENROLLED:
            row.rotated_at = now
        else:
            row.enrolled_at = now
        row.public_key, row.fingerprint, row.state = row.offered_key, fp, IdentityState.ENROLLED
        _clear_offer(row)
    elif row.state == IdentityState.ENROLLED and fp == row.fingerprint:
        return row                       # already so: approving twice changes nothing
    elif row.state == IdentityState.REVOKED and fp == row.fingerprint:
        raise Conflict(f"key {fp} of unit {name} is revoked and is never accepted again; "
                       f"the unit must make a new key (dvsan-unit-agent --rotate-key)")
    else:
        offered = [f for f in (row.fingerprint if row.state == IdentityState.PENDING else None,
                               row.offered_fingerprint) if f]
        raise Conflict(f"unit {name} offers no key {fp}; "
                       + (f"it offers {', '.join(offered)}" if offered else "it offers none"))
    log.warning("operator approved unit %s with key %s", name, fp)
    return row


def enrol_key(s: Session, name: str, public_key: str) -> UnitIdentityRow:
    """An operator enrols (or re-enrols, or rotates to) a key given out of band; a revoked key never."""
    check_unit_name(name)
    key = decode_public(public_key)
    text, fp = encode_public(key), fingerprint(key)
    row = s.get(UnitIdentityRow, name)
    now = _now()
    if row is None:
        row = UnitIdentityRow(name=name, public_key=text, fingerprint=fp, state=IdentityState.ENROLLED,
                              first_address="", created_at=now, enrolled_at=now, refused_count=0)
        s.add(row)
    elif row.state == IdentityState.REVOKED and row.public_key == text:
        raise Conflict(f"key {fp} of unit {name} is revoked and is never accepted again")
    else:
        if row.state == IdentityState.ENROLLED and row.public_key != text:
            row.rotated_at = now
        elif row.state != IdentityState.ENROLLED:
            row.enrolled_at = now
        row.public_key, row.fingerprint, row.state = text, fp, IdentityState.ENROLLED
        if row.offered_key == text:
            _clear_offer(row)
    log.warning("operator enrolled unit %s with key %s", name, fp)
    return row


def revoke(s: Session, name: str) -> tuple[UnitIdentityRow, int]:
    """Refuse every message of `name` from now on; its volumes go offline (kept, with assignments).

    Returns the row and how many volumes went offline.
    """
    row = get_identity(s, name)
    offline = 0
    if row.state != IdentityState.REVOKED:
        row.state, row.revoked_at = "revoked", _now()
        log.warning("operator revoked unit %s (key %s)", name, row.fingerprint)
    if s.get(UnitRow, name) is not None:
        offline = pool.record_shutdown(s, name, UnitState.OFFLINE)
    return row, offline


def forget_pending(s: Session, name: str) -> None:
    """Drop a pending announcement (a name nobody will approve); enrolled and revoked stay."""
    row = get_identity(s, name)
    if row.state != IdentityState.PENDING:
        raise Conflict(f"unit {name} is {row.state}: only a pending unit can be forgotten (revoke instead)")
    s.delete(row)
