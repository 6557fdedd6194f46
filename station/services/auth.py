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
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from dvsan.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from dvsan.naming import check_iqn, check_unit_name
from station.db.tables import (
    AssignmentRow,
    GrantRow,
    GroupMemberRow,
    GroupRow,
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
                           "units.write", "enrolment.write", "users.admin", "tokens.own", "disks.write"}),
    Role.OPERATOR: frozenset({"pool.read", "assignments.write", "volumes.wipe", "hosts.read",
                              "hosts.write", "units.write", "tokens.own", "disks.write"}),
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

    def may_somewhere(self, permission: str, *kinds: str) -> bool:
        """Its role allows `permission`, or a grant does on some object (of `kinds`, e.g.
        "units", "volumes", when given)."""
        return permission in PERMISSIONS.get(self.role, frozenset()) or any(
            permission in PERMISSIONS.get(g.role, frozenset())
            and (not kinds or g.path.split("/")[1] in kinds) for g in self.grants)

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


def add_grant(s: Session, user: str | None, role: str, obj: str, propagate: bool, by: str,
              group: str | None = None) -> GrantRow:
    """Give `role` on `obj` to one user or to one group (exactly one of them)."""
    if (user is None) == (group is None):
        raise InvalidInput("a grant is given to a user or to a group: name exactly one of them")
    if role not in GRANT_ROLES:
        raise InvalidInput(f"a grant's role is one of {', '.join(GRANT_ROLES)}, not {str(role)[:20]!r}")
    check_object(obj)
    if user is not None and s.get(UserRow, user) is None:
        raise NotFound(f"no user {user!r}")
    if group is not None and s.get(GroupRow, group) is None:
        raise NotFound(f"no group {group!r}")
    who = GrantRow.user_name == user if user is not None else GrantRow.group_name == group
    if s.scalars(select(GrantRow).where(who, GrantRow.role == role, GrantRow.object == obj)).first() is not None:
        raise Conflict(f"{'user' if user is not None else 'group'} {user or group!r} already has {role} on {obj}")
    g = GrantRow(user_name=user, group_name=group, role=role, object=obj, propagate=propagate,
                 created_by=by[:80])
    s.add(g)
    s.flush()
    return g


def list_grants(s: Session, user: str | None = None, group: str | None = None,
                obj: str | None = None) -> list[GrantRow]:
    q = select(GrantRow).order_by(GrantRow.id)
    if user:
        q = q.where(GrantRow.user_name == user)
    if group:
        q = q.where(GrantRow.group_name == group)
    if obj:
        q = q.where(GrantRow.object == obj)
    return list(s.scalars(q))


def delete_grant(s: Session, grant_id: int) -> GrantRow:
    g = s.get(GrantRow, grant_id)
    if g is None:
        raise NotFound(f"no grant with id {grant_id}")
    s.delete(g)
    s.flush()
    return g


def grants_of(s: Session, user: str) -> tuple[Grant, ...]:
    """The grants a user holds: its own and those of every group it belongs to."""
    groups = select(GroupMemberRow.group_name).where(GroupMemberRow.user_name == user)
    rows = s.scalars(select(GrantRow).where(or_(GrantRow.user_name == user, GrantRow.group_name.in_(groups)))
                     .order_by(GrantRow.id))
    return tuple(Grant(g.role, g.object, g.propagate) for g in rows)


def _insert(s: Session, row: Any, conflict: str) -> None:
    """Add a row; a twin added by a concurrent call since we looked is a Conflict, not a 500 (the
    session is spoilt then, and the caller's transaction rolls back with the raise)."""
    # NOTE: no savepoint: under pysqlite's own transaction handling a released SAVEPOINT opened
    # before any write commits for good, which would outlive a later error of the same call.
    s.add(row)
    try:
        s.flush()
    except IntegrityError as e:
        raise Conflict(conflict) from e


# --- groups --------------------------------------------------------------------------------------

def create_group(s: Session, name: str, by: str) -> GroupRow:
    check_unit_name(name)
    if s.get(GroupRow, name) is not None:
        raise Conflict(f"group {name!r} exists")
    row = GroupRow(name=name, created_by=by[:80])
    _insert(s, row, f"group {name!r} exists")
    return row


def get_group(s: Session, name: str) -> GroupRow:
    row = s.get(GroupRow, name)
    if row is None:
        raise NotFound(f"no group {name!r}")
    return row


def list_groups(s: Session) -> list[tuple[GroupRow, list[str]]]:
    """Every group with its members' names."""
    members: dict[str, list[str]] = {}
    for m in s.scalars(select(GroupMemberRow).order_by(GroupMemberRow.user_name)):
        members.setdefault(m.group_name, []).append(m.user_name)
    return [(g, members.get(g.name, [])) for g in s.scalars(select(GroupRow).order_by(GroupRow.name))]


def group_members(s: Session, name: str) -> list[str]:
    get_group(s, name)
    return list(s.scalars(select(GroupMemberRow.user_name).where(GroupMemberRow.group_name == name)
                          .order_by(GroupMemberRow.user_name)))


def delete_group(s: Session, name: str) -> None:
    """A group goes with its memberships and the grants given to it."""
    row = get_group(s, name)
    s.execute(delete(GrantRow).where(GrantRow.group_name == name))
    s.execute(delete(GroupMemberRow).where(GroupMemberRow.group_name == name))
    s.delete(row)


def add_member(s: Session, group: str, user: str) -> None:
    get_group(s, group)
    if s.get(UserRow, user) is None:
        raise NotFound(f"no user {user!r}")
    if s.get(GroupMemberRow, (group, user)) is not None:
        raise Conflict(f"user {user!r} is in group {group!r} already")
    _insert(s, GroupMemberRow(group_name=group, user_name=user), f"user {user!r} is in group {group!r} already")


def remove_member(s: Session, group: str, user: str) -> None:
    get_group(s, group)
    row = s.get(GroupMemberRow, (group, user))
    if row is None:
        raise NotFound(f"user {user!r} is not in group {group!r}")
    s.delete(row)


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
    s.execute(delete(GroupMemberRow).where(GroupMemberRow.user_name == name))
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

def enrol_host(s: Session, name: str, initiators: list[str], users: list[str] | tuple[str, ...] = (),
               groups: list[str] | tuple[str, ...] = (), by: str = "") -> HostRow:
    """Enrol a host with its initiator names, and the users and groups who may use its storage
    (each gets `operator` on `/hosts/NAME`: request and release storage for it, see it)."""
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
    for u in sorted(set(users)):
        add_grant(s, u, Role.OPERATOR, f"/hosts/{name}", True, by)
    for g in sorted(set(groups)):
        add_grant(s, None, Role.OPERATOR, f"/hosts/{name}", True, by, group=g)
    log.info("host %s enrolled with initiator(s) %s", name, ", ".join(iqns))
    return row


def host_users(s: Session, name: str) -> tuple[list[str], list[str]]:
    """The users and the groups given a role on the host (its storage is theirs to use)."""
    rows = list_grants(s, obj=f"/hosts/{name}")
    return (sorted({g.user_name for g in rows if g.user_name}), sorted({g.group_name for g in rows if g.group_name}))


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
    # grants on it would otherwise hold for the next host enrolled under the same name
    s.execute(delete(GrantRow).where(or_(GrantRow.object == f"/hosts/{name}",
                                         GrantRow.object.startswith(f"/hosts/{name}/", autoescape=True))))
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
    return Principal("user", user.name, user.role, row.id, grants_of(s, user.name))


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
