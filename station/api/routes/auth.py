"""REST routes of who may use the station: login, API tokens, users (admin), enrolled hosts."""

import asyncio
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import SkipJsonSchema
from starlette.concurrency import run_in_threadpool

from dvsan.errors import Conflict, Unauthenticated
from station.api.deps import Admin, Caller, DbDep, HostAdmin, HostReader
from station.api.schemas import IdPath, Iqn, Name, NamePath, UtcDatetime
from station.services import audit, auth

router = APIRouter(prefix="/api/v1", tags=["auth"])
FAILED_LOGIN_DELAY = 1.0      # seconds added to every failed login (on top of argon2's own cost)


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    password: str = Field(min_length=1, max_length=1024)


class TokenCreated(BaseModel):
    """A new token. `token` is shown here once and never again: keep it in a 0600 file."""

    id: int
    token: str
    expires_at: UtcDatetime | None


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field("", max_length=63)
    days: int | None = Field(None, ge=1, le=3650, description="expiry; none: until revoked")


class TokenPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    user_name: str | None
    host_name: str | None
    label: str
    created_at: UtcDatetime
    expires_at: UtcDatetime | None
    revoked_at: UtcDatetime | None
    last_used_at: UtcDatetime | None


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    role: Literal["admin", "operator", "viewer"]
    password: str = Field(min_length=auth.MIN_PASSWORD, max_length=1024)


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    role: str
    created_at: UtcDatetime
    locked_until: UtcDatetime | None


class HostCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    initiator_iqns: list[Iqn] = Field(min_length=1, max_length=16)
    users: list[Name] = Field(default_factory=list, max_length=32, description=(
        "users who may use the host's storage (each gets operator on /hosts/NAME)"))
    groups: list[Name] = Field(default_factory=list, max_length=32, description=(
        "groups whose members may use the host's storage (operator on /hosts/NAME)"))


class HostPublic(BaseModel):
    name: str
    initiator_iqns: list[str]
    created_at: UtcDatetime
    users: list[str] = Field(default_factory=list, description="users who may use its storage")
    groups: list[str] = Field(default_factory=list, description="groups who may use its storage")


class HostEnrolled(HostPublic):
    """The host and its token, shown once: put it on the host (`dvsan-host-agent --token-file`)."""

    token: TokenCreated


async def _login(db: DbDep, body: "LoginRequest", request: Request, label: str) -> auth.NewToken:
    request.state.audit = {"name": body.name}

    def check() -> auth.NewToken:
        with db.session() as s:
            try:
                return auth.login(s, body.name, body.password, label=label)[1]
            except Unauthenticated as e:
                s.commit()                 # the failure stays counted
                raise e from None
    try:
        return await run_in_threadpool(check)
    except Unauthenticated:
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        raise


@router.post("/login", response_model=TokenCreated)
async def login(body: LoginRequest, db: DbDep, request: Request) -> TokenCreated:
    """A user's name and password for a token valid 12 hours. Failures are slowed and counted;
    five in a row lock the account for five minutes."""
    t = await _login(db, body, request, "login")
    return TokenCreated(id=t.id, token=t.value, expires_at=t.expires_at)


class SessionCreated(BaseModel):
    """A console session: its cookie is HttpOnly; send `csrf_token` as `X-CSRF-Token` on writes."""

    csrf_token: str
    expires_at: datetime | None


@router.post("/session", response_model=SessionCreated)
async def open_session(body: LoginRequest, db: DbDep, request: Request, response: Response) -> SessionCreated:
    """Log in for the web console: a server-side session (cookie `dvsan_session`: HttpOnly,
    SameSite=Strict, Secure over TLS, 12 hours) and the CSRF token every write must carry in the
    `X-CSRF-Token` header. Same lockout as `/login`."""
    t = await _login(db, body, request, "session")
    response.set_cookie(auth.SESSION_COOKIE, t.value, max_age=int(auth.LOGIN_TOKEN_TTL.total_seconds()),
                        httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/")
    return SessionCreated(csrf_token=auth.csrf_token(t.value), expires_at=t.expires_at)


@router.delete("/session", status_code=status.HTTP_204_NO_CONTENT)
def close_session(db: DbDep, who: Caller, request: Request) -> Response:
    """Log out: the session's token is revoked and its cookie cleared (409 for a bearer token:
    revoke those with `DELETE /api/v1/tokens/{id}`)."""
    if getattr(request.state, "via", None) != "session":
        raise Conflict("no console session in this call (it came with a bearer token): revoke a "
                       "token with DELETE /api/v1/tokens/{id}")
    with db.session() as s:
        auth.revoke_token(s, who.token_id, who)
    r = Response(status_code=status.HTTP_204_NO_CONTENT)
    r.delete_cookie(auth.SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return r


class GrantHeld(BaseModel):
    role: str
    object: str
    propagate: bool


class MePublic(BaseModel):
    """Who the caller is and what it may do, so a client offers only what it may: `permissions`
    are those its role gives everywhere and its grants give somewhere (the station still checks
    each call against the object)."""

    kind: Literal["user", "host"]
    name: str
    role: str
    permissions: list[str]
    grants: list[GrantHeld]
    csrf_token: str | None = Field(description="a console session's CSRF token (send it as "
                                               "`X-CSRF-Token` on writes); null for a bearer token")


@router.get("/me", response_model=MePublic)
def whoami(who: Caller, request: Request) -> MePublic:
    """The caller: name, role, permissions and grants (and a console session's CSRF token, so a
    page opened in a new tab can write without signing in again)."""
    perms = sorted(p for p in {*auth.PERMISSIONS.get(who.role, ()),
                               *(p for g in who.grants for p in auth.PERMISSIONS.get(g.role, ()))})
    session = request.cookies.get(auth.SESSION_COOKIE) if getattr(request.state, "via", None) == "session" else None
    return MePublic(kind="host" if who.kind == "host" else "user", name=who.name, role=who.role,
                    permissions=perms, grants=[GrantHeld(role=g.role, object=g.path, propagate=g.propagate)
                                               for g in who.grants],
                    csrf_token=auth.csrf_token(session) if session else None)


@router.post("/tokens", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, db: DbDep, who: Caller) -> TokenCreated:
    """A new API token for the calling user (scripts); hosts get theirs when enrolled."""
    who.require("tokens.own")
    with db.session() as s:
        t = auth.create_token(s, user=who.name, label=body.label,
                              ttl=timedelta(days=body.days) if body.days else None)
    return TokenCreated(id=t.id, token=t.value, expires_at=t.expires_at)


@router.get("/tokens", response_model=list[TokenPublic])
def list_tokens(db: DbDep, who: Caller) -> list[TokenPublic]:
    """Tokens, never their values: the caller's own (an admin: everyone's)."""
    who.require("tokens.own")
    with db.session() as s:
        rows = auth.list_tokens(s, None if who.may("users.admin") else who.name)
        return [TokenPublic.model_validate(r) for r in rows]


@router.delete("/tokens/{token_id}", response_model=TokenPublic)
def revoke_token(token_id: IdPath, db: DbDep, who: Caller) -> TokenPublic:
    who.require("tokens.own")
    with db.session() as s:
        return TokenPublic.model_validate(auth.revoke_token(s, token_id, who))


@router.post("/users", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, db: DbDep, _: Admin) -> UserPublic:
    with db.session() as s:
        return UserPublic.model_validate(auth.create_user(s, body.name, body.role, body.password))


@router.get("/users", response_model=list[UserPublic])
def list_users(db: DbDep, _: Admin) -> list[UserPublic]:
    with db.session() as s:
        return [UserPublic.model_validate(u) for u in auth.list_users(s)]


@router.delete("/users/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_user(name: NamePath, db: DbDep, who: Admin) -> Response:
    if name == who.name:
        raise Conflict("an admin cannot delete their own account")
    with db.session() as s:
        auth.delete_user(s, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/hosts", response_model=HostEnrolled, status_code=status.HTTP_201_CREATED)
def enrol_host(body: HostCreate, db: DbDep, who: HostAdmin, request: Request) -> HostEnrolled:
    """Enrol a host with its initiator names and who may use its storage; answers its token (once).
    Unknown users or groups: 404, and nothing is enrolled."""
    request.state.audit = {"host": body.name, "initiator_iqns": body.initiator_iqns,
                           "users": body.users, "groups": body.groups}
    with db.session() as s:
        h = auth.enrol_host(s, body.name, body.initiator_iqns, body.users, body.groups, str(who))
        users, groups = auth.host_users(s, h.name)
        t = auth.create_token(s, host=h.name, label="host")
        return HostEnrolled(name=h.name, initiator_iqns=h.initiators, created_at=h.created_at,
                            users=users, groups=groups,
                            token=TokenCreated(id=t.id, token=t.value, expires_at=t.expires_at))


@router.get("/hosts", response_model=list[HostPublic])
def list_hosts(db: DbDep, _: HostReader) -> list[HostPublic]:
    with db.session() as s:
        return [HostPublic(name=h.name, initiator_iqns=h.initiators, created_at=h.created_at,
                           users=(hu := auth.host_users(s, h.name))[0], groups=hu[1])
                for h in auth.list_hosts(s)]


@router.delete("/hosts/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_host(name: NamePath, db: DbDep, _: HostAdmin) -> Response:
    """Forget a host (refused while it holds storage); its tokens are revoked."""
    with db.session() as s:
        auth.delete_host(s, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class GrantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "oneOf": [{"required": ["user"]}, {"required": ["group"]}]})
    user: Annotated[str, Field(min_length=1, max_length=63)] | SkipJsonSchema[None] = Field(
        None, description="a user, or:")
    group: Annotated[str, Field(min_length=1, max_length=63)] | SkipJsonSchema[None] = Field(
        None, description="a group (its members)")
    role: str = Field(description="operator or viewer", pattern="^(operator|viewer)$")
    object: str = Field(max_length=255, pattern=auth.OBJECT_RE.pattern, description=(
        "/units/NAME, /units/NAME/disks/DISK, /units/NAME/disks/DISK/DEVICE, /volumes/ID or /hosts/NAME"))
    propagate: bool = Field(default=True, description="also on everything under the object")

    @model_validator(mode="after")
    def _user_or_group(self) -> "GrantCreate":
        if (self.user is None) == (self.group is None):
            raise ValueError("name a user or a group, exactly one of them")
        return self


class GrantPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    user_name: str | None
    group_name: str | None
    role: str
    object: str
    propagate: bool
    created_by: str
    created_at: datetime


def _grant_audit(g: GrantPublic) -> dict[str, Any]:
    return {"grant": g.id, "user": g.user_name, "group": g.group_name, "role": g.role, "object": g.object}


@router.post("/grants", response_model=GrantPublic, status_code=status.HTTP_201_CREATED)
def create_grant(body: GrantCreate, db: DbDep, who: Admin, request: Request) -> GrantPublic:
    """Give a user, or every member of a group, a role on one object (and under it): an operator
    of one unit and nothing else is a viewer with `operator` on `/units/unit-a`. Takes effect at
    the user's next call."""
    with db.session() as s:
        g = GrantPublic.model_validate(auth.add_grant(s, body.user, body.role, body.object,
                                                      body.propagate, str(who), group=body.group))
    request.state.audit = _grant_audit(g)
    return g


@router.get("/grants", response_model=list[GrantPublic])
def list_grants(db: DbDep, _: Admin, user: Annotated[str | None, Query(max_length=63)] = None,
                group: Annotated[str | None, Query(max_length=63)] = None) -> list[GrantPublic]:
    with db.session() as s:
        return [GrantPublic.model_validate(g) for g in auth.list_grants(s, user, group)]


@router.delete("/grants/{grant_id}", response_model=GrantPublic)
def delete_grant(grant_id: IdPath, db: DbDep, _: Admin,
                 request: Request) -> GrantPublic:
    with db.session() as s:
        g = GrantPublic.model_validate(auth.delete_grant(s, grant_id))
    request.state.audit = _grant_audit(g)
    return g


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Name
    members: list[Name] = Field(default_factory=list, max_length=256)


class GroupPublic(BaseModel):
    name: str
    members: list[str]
    created_by: str
    created_at: UtcDatetime


@router.post("/groups", response_model=GroupPublic, status_code=status.HTTP_201_CREATED)
def create_group(body: GroupCreate, db: DbDep, who: Admin, request: Request) -> GroupPublic:
    """A group of users, to give grants to all of them at once (unknown member: 404, no group)."""
    request.state.audit = {"group": body.name, "members": body.members}
    with db.session() as s:
        g = auth.create_group(s, body.name, str(who))
        for m in sorted(set(body.members)):
            auth.add_member(s, g.name, m)
        return GroupPublic(name=g.name, members=auth.group_members(s, g.name), created_by=g.created_by,
                           created_at=g.created_at)


@router.get("/groups", response_model=list[GroupPublic])
def list_groups(db: DbDep, _: Admin) -> list[GroupPublic]:
    with db.session() as s:
        return [GroupPublic(name=g.name, members=m, created_by=g.created_by, created_at=g.created_at)
                for g, m in auth.list_groups(s)]


@router.delete("/groups/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_group(name: NamePath, db: DbDep, _: Admin, request: Request) -> Response:
    """A group goes with its memberships and every grant given to it."""
    request.state.audit = {"group": name}
    with db.session() as s:
        auth.delete_group(s, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/groups/{name}/members/{user}", status_code=status.HTTP_204_NO_CONTENT)
def add_group_member(name: NamePath, user: NamePath, db: DbDep, _: Admin, request: Request) -> Response:
    request.state.audit = {"group": name, "member": user}
    with db.session() as s:
        auth.add_member(s, name, user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.delete("/groups/{name}/members/{user}", status_code=status.HTTP_204_NO_CONTENT)
def remove_group_member(name: NamePath, user: NamePath, db: DbDep, _: Admin, request: Request) -> Response:
    request.state.audit = {"group": name, "member": user}
    with db.session() as s:
        auth.remove_member(s, name, user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class AuditPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    at: UtcDatetime
    principal: str
    source: str
    action: str
    object: str
    outcome: int
    detail: str | None


@router.get("/audit", response_model=list[AuditPublic])
def read_audit(db: DbDep, _: Admin, principal: str | None = None, action: str | None = None,
               since: datetime | None = None, outcome: Annotated[int | None, Query(ge=100, le=599)] = None,
               limit: Annotated[int, Query(ge=1, le=10000)] = 100) -> list[AuditPublic]:
    """The audit log, newest first (admins): every write, login and refusal, filtered."""
    with db.session() as s:
        return [AuditPublic.model_validate(r) for r in audit.query(s, principal=principal, action=action,
                                                                   since=since, outcome=outcome, limit=limit)]
