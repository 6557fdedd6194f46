"""Who may do what at the station: users (argon2 password hashes), enrolled hosts, API tokens, roles.

Tokens look like `dvsan_<id>_<secret>`: the secret is 32 random bytes (urlsafe base64), shown once
when the token is made; the station keeps only its SHA-256 (a random 256-bit secret needs no slow
hash; passwords do, and get argon2id). A token belongs to a user (their role) or to an enrolled host
(the `host` role: its own assignments only, with its enrolled initiator names only).

Failed logins are counted per user; `LOCK_AFTER` in a row lock the account for `LOCK_FOR`. Unknown
names cost the same hash as known ones, so a timing does not tell which names exist.
"""

import hashlib
import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from dvsan.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from dvsan.naming import check_iqn, check_unit_name
from station.db.tables import (
    AssignmentRow,
    GrantRow,
    HostRow,
    Role,
    TokenRow,
    UserRow,
    VolumeRow,
    utcnow,
)

log = logging.getLogger(__name__)

MIN_PASSWORD = 12
LOCK_AFTER = 5
LOCK_FOR = timedelta(minutes=5)
LOGIN_TOKEN_TTL = timedelta(hours=12)
TOUCH_EVERY = timedelta(seconds=60)     # last_used_at is written at most this often per token
TOKEN_PREFIX = "dvsan_"
SESSION_COOKIE = "dvsan_session"
CSRF_HEADER = "X-CSRF-Token"

# What each role may do. `host.storage` is a host's own storage only (the routes check whose).
PERMISSIONS: dict[str, frozenset[str]] = {
    Role.ADMIN: frozenset({"pool.read", "assignments.write", "volumes.wipe", "hosts.read", "hosts.write",
                           "enrolment.write", "users.admin", "tokens.own"}),
    Role.OPERATOR: frozenset({"pool.read", "assignments.write", "volumes.wipe", "hosts.read",
                              "hosts.write", "tokens.own"}),
    Role.VIEWER: frozenset({"pool.read", "hosts.read", "tokens.own"}),
    Role.HOST: frozenset({"host.storage"}),
}
USER_ROLES = (Role.ADMIN, Role.OPERATOR, Role.VIEWER)

_hasher = PasswordHasher()
# NOTE: verified against for unknown names, so that they take as long as known ones.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


GRANT_ROLES = (Role.OPERATOR, Role.VIEWER)
OBJECT_RE = re.compile(r"^/(units|volumes|hosts)(/[a-z0-9][a-z0-9.\-]{0,62}){1,4}$")


def check_object(path: str) -> str:
    """An object path a grant may name: `/units/NAME[/disks/DISK[/DEVICE]]`, `/volumes/ID`,
    `/hosts/NAME`."""
    if not isinstance(path, str) or not OBJECT_RE.fullmatch(path):
        raise InvalidInput(f"object {str(path)[:80]!r} is not a path like /units/unit-a, "
                           "/units/unit-a/disks/vdb, /volumes/17 or /hosts/host-b")
    return path


@dataclass(frozen=True)
class Grant:
    """A role on one object, and on everything under it when it propagates."""

    role: str
    path: str
    propagate: bool = True

    def covers(self, obj: str) -> bool:
        return obj == self.path or (self.propagate and obj.startswith(self.path + "/"))


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user with a role (and grants on objects), or an enrolled host (`host`)."""

    kind: str                     # "user" | "host"
    name: str
    role: str
    token_id: int
    grants: tuple[Grant, ...] = ()

    def may(self, permission: str, *objects: str) -> bool:
        """Its role allows `permission` everywhere, or a grant allows it on one of `objects`
        (the paths of one thing: a volume is `/volumes/17` and `/units/unit-a/disks/vdb/vdb1`)."""
        if permission in PERMISSIONS.get(self.role, frozenset()):
            return True
        return any(permission in PERMISSIONS.get(g.role, frozenset()) and any(g.covers(o) for o in objects)
                   for g in self.grants)

    def may_somewhere(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset()) or any(
            permission in PERMISSIONS.get(g.role, frozenset()) for g in self.grants)

    def require(self, permission: str, *objects: str) -> None:
        if not self.may(permission, *objects):
            where = f" on {objects[0]}" if objects else ""
            raise Forbidden(f"{self.kind} {self.name!r} (role {self.role}) lacks the permission "
                            f"{permission!r}{where}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


def volume_paths(v: VolumeRow) -> tuple[str, ...]:
    """The object paths of a volume, for grants: by id, and under its unit and disk."""
    return (f"/volumes/{v.id}", f"/units/{v.unit_name}/disks/{v.disk}/{v.device}")


def add_grant(s: Session, user: str, role: str, obj: str, propagate: bool, by: str) -> GrantRow:
    if role not in GRANT_ROLES:
        raise InvalidInput(f"a grant's role is one of {', '.join(GRANT_ROLES)}, not {str(role)[:20]!r}")
    check_object(obj)
    if s.get(UserRow, user) is None:
        raise NotFound(f"no user {user!r}")
    if s.scalars(select(GrantRow).where(GrantRow.user_name == user, GrantRow.role == role,
                                        GrantRow.object == obj)).first() is not None:
        raise Conflict(f"user {user!r} already has {role} on {obj}")
    g = GrantRow(user_name=user, role=role, object=obj, propagate=propagate, created_by=by[:80])
    s.add(g)
    s.flush()
    return g


def list_grants(s: Session, user: str | None = None) -> list[GrantRow]:
    q = select(GrantRow).order_by(GrantRow.id)
    if user:
        q = q.where(GrantRow.user_name == user)
    return list(s.scalars(q))


def delete_grant(s: Session, grant_id: int) -> GrantRow:
    g = s.get(GrantRow, grant_id)
    if g is None:
        raise NotFound(f"no grant with id {grant_id}")
    s.delete(g)
    s.flush()
    return g


@dataclass(frozen=True)
class NewToken:
    """A token just made: its secret value is here and nowhere else, ever."""

    id: int
    value: str
    expires_at: datetime | None


def _sha(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise InvalidInput(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > 1024:
        raise InvalidInput("a password of more than 1024 characters is refused")
    return password


def check_role(role: str) -> str:
    if role not in USER_ROLES:
        raise InvalidInput(f"role must be one of {', '.join(USER_ROLES)}, not {role!r}")
    return role


# --- users ---------------------------------------------------------------------------------------

def create_user(s: Session, name: str, role: str, password: str) -> UserRow:
    check_unit_name(name)
    check_role(role)
    check_password(password)
    if s.get(UserRow, name) is not None:
        raise Conflict(f"user {name!r} exists")
    row = UserRow(name=name, role=role, password_hash=_hasher.hash(password))
    s.add(row)
    s.flush()
    log.info("user %s created with role %s", name, role)
    return row


def user_count(s: Session) -> int:
    return int(s.scalar(select(func.count()).select_from(UserRow)) or 0)


def list_users(s: Session) -> list[UserRow]:
    return list(s.scalars(select(UserRow).order_by(UserRow.name)))


def delete_user(s: Session, name: str) -> None:
    row = s.get(UserRow, name)
    if row is None:
        raise NotFound(f"no user {name!r}")
    # its tokens and grants die with it (deleted, not kept revoked: they name the user)
    s.execute(delete(TokenRow).where(TokenRow.user_name == name))
    s.execute(delete(GrantRow).where(GrantRow.user_name == name))
    s.delete(row)


def csrf_token(session_token: str) -> str:
    """The CSRF token of a console session: derived from its secret, so a page of another site,
    which can make the browser send the cookie but never read it, cannot know it."""
    return hmac.new(session_token.encode(), b"dvsan csrf v1", hashlib.sha256).hexdigest()


def check_csrf(session_token: str, header: str | None) -> None:
    if not header or not hmac.compare_digest(header.encode(), csrf_token(session_token).encode()):
        raise Forbidden(f"a write from a console session needs the {CSRF_HEADER} header its login answered")


def login(s: Session, name: str, password: str, now: datetime | None = None,
          label: str = "login") -> tuple[UserRow, NewToken]:
    """Check a user's password; a token valid for LOGIN_TOKEN_TTL, or Unauthenticated.

    The caller commits even when this raises (the failure count must stay counted).
    """
    now = now or utcnow()
    row = s.get(UserRow, name) if isinstance(name, str) and len(name) <= 63 else None
    if row is not None and row.locked_until is not None and _aware(row.locked_until) > now:
        _hasher_verify(_DUMMY_HASH, password)
        raise Unauthenticated(f"too many failed logins: the account is locked until "
                              f"{_aware(row.locked_until).isoformat(timespec='seconds')}")
    ok = _hasher_verify(row.password_hash if row is not None else _DUMMY_HASH, password)
    if row is None or not ok:
        if row is not None:
            row.failed_logins += 1
            if row.failed_logins >= LOCK_AFTER:
                row.locked_until = now + LOCK_FOR
                row.failed_logins = 0
                log.warning("user %s locked for %s after %d failed logins", name, LOCK_FOR, LOCK_AFTER)
        raise Unauthenticated("wrong user name or password")
    row.failed_logins, row.locked_until = 0, None
    if _hasher.check_needs_rehash(row.password_hash):
        row.password_hash = _hasher.hash(password)
    return row, create_token(s, user=name, label=label, ttl=LOGIN_TOKEN_TTL, now=now)


def _hasher_verify(hashed: str, password: str) -> bool:
    try:
        return _hasher.verify(hashed, password if isinstance(password, str) else "")
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _aware(t: datetime) -> datetime:
    # NOTE: SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# --- hosts ---------------------------------------------------------------------------------------

def enrol_host(s: Session, name: str, initiators: list[str]) -> HostRow:
    check_unit_name(name)
    if not initiators:
        raise InvalidInput("a host needs at least one initiator name")
    iqns = sorted({check_iqn(i) for i in initiators})
    if s.get(HostRow, name) is not None:
        raise Conflict(f"host {name!r} is enrolled already")
    row = HostRow(name=name, initiator_iqns=" ".join(iqns))
    if len(row.initiator_iqns) > 2048:
        raise InvalidInput("too many initiator names for one host")
    s.add(row)
    s.flush()
    log.info("host %s enrolled with initiator(s) %s", name, ", ".join(iqns))
    return row


def get_host(s: Session, name: str) -> HostRow:
    row = s.get(HostRow, name)
    if row is None:
        raise NotFound(f"no enrolled host {name!r}")
    return row


def list_hosts(s: Session) -> list[HostRow]:
    return list(s.scalars(select(HostRow).order_by(HostRow.name)))


def delete_host(s: Session, name: str) -> None:
    """Forget a host and revoke its tokens; refused while it holds storage."""
    row = get_host(s, name)
    held = s.scalar(select(func.count()).select_from(AssignmentRow).where(AssignmentRow.host_name == name))
    if held:
        raise Conflict(f"host {name!r} holds {held} assignment(s): release them first")
    s.execute(delete(TokenRow).where(TokenRow.host_name == name))
    s.delete(row)


# --- tokens --------------------------------------------------------------------------------------

def create_token(s: Session, *, user: str | None = None, host: str | None = None, label: str = "",
                 ttl: timedelta | None = None, now: datetime | None = None) -> NewToken:
    if (user is None) == (host is None):
        raise ValueError("a token belongs to exactly one user or host")
    if user is not None and s.get(UserRow, user) is None:
        raise NotFound(f"no user {user!r}")
    if host is not None:
        get_host(s, host)
    if len(label) > 63:
        raise InvalidInput("a token's label has at most 63 characters")
    now = now or utcnow()
    secret = secrets.token_urlsafe(32)
    row = TokenRow(secret_sha256=_sha(secret), user_name=user, host_name=host, label=label,
                   created_at=now, expires_at=now + ttl if ttl else None)
    s.add(row)
    s.flush()
    return NewToken(row.id, f"{TOKEN_PREFIX}{row.id}_{secret}", row.expires_at)


def list_tokens(s: Session, user: str | None = None) -> list[TokenRow]:
    q = select(TokenRow).order_by(TokenRow.id)
    if user is not None:
        q = q.where(TokenRow.user_name == user)
    return list(s.scalars(q))


def revoke_token(s: Session, token_id: int, by: Principal) -> TokenRow:
    row = s.get(TokenRow, token_id)
    if row is None or (not by.may("users.admin") and row.user_name != by.name):
        raise NotFound(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def authenticate(s: Session, value: str, now: datetime | None = None) -> Principal:
    """The principal a bearer token stands for; Unauthenticated for anything else."""
    now = now or utcnow()
    if not value.startswith(TOKEN_PREFIX):
        raise Unauthenticated("not a dvsan token")
    ident, _, secret = value[len(TOKEN_PREFIX):].partition("_")
    if not ident.isdigit() or len(ident) > 18 or not secret:
        raise Unauthenticated("not a dvsan token")
    row = s.get(TokenRow, int(ident))
    if row is None or not hmac.compare_digest(row.secret_sha256, _sha(secret)):
        raise Unauthenticated("unknown token")
    if row.revoked_at is not None:
        raise Unauthenticated("the token was revoked")
    if row.expires_at is not None and _aware(row.expires_at) <= now:
        raise Unauthenticated("the token has expired")
    if row.last_used_at is None or _aware(row.last_used_at) + TOUCH_EVERY < now:
        row.last_used_at = now
    if row.host_name is not None:
        return Principal("host", row.host_name, Role.HOST, row.id)
    user = s.get(UserRow, row.user_name)
    if user is None:
        raise Unauthenticated("the token's user no longer exists")
    grants = tuple(Grant(g.role, g.object, g.propagate) for g in
                   s.scalars(select(GrantRow).where(GrantRow.user_name == user.name)))
    return Principal("user", user.name, user.role, row.id, grants)


def check_host_request(s: Session, who: Principal, host: str, initiator_iqn: str) -> None:
    """A request for storage on behalf of `host` with `initiator_iqn`: may `who` make it?

    An operator by role may; one by grant only on what its grants cover (`allocation_scope`)."""
    if who.may_somewhere("assignments.write"):
        return
    if who.kind != "host":
        who.require("assignments.write")
    who.require("host.storage")
    if host != who.name:
        raise Forbidden(f"host {who.name!r} may request storage only for itself, not for {host!r}")
    enrolled = get_host(s, who.name).initiators
    if initiator_iqn not in enrolled:
        raise Forbidden(f"initiator {initiator_iqn} is not enrolled for host {who.name!r} "
                        f"(enrolled: {', '.join(enrolled)})")


def may_see_assignment(who: Principal, a: AssignmentRow) -> bool:
    return who.may("pool.read") or (who.may("host.storage") and a.host_name == who.name)
