"""The routes' dependencies: the database, the services, and who is calling (`require(permission)`).

Every route but /healthz and /login depends on a principal: no credentials or bad ones answer
401, a missing permission 403 naming it (station/services/auth.py). The caller is known before what
they sent is judged: `authenticate_first` gives the 401 when FastAPI refused a body before it asked.
"""

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from dvsan.errors import Unauthenticated
from station.db import Database
from station.listeners.autoconf import AutoconfListener
from station.services import auth
from station.services.events import EventBus
from station.services.exports import ExportPusher
from station.services.stats import StatsService
from station.services.tasks import TaskService
from station.services.units import UnitService
from station.services.wipes import WipeService

_bearer = HTTPBearer(auto_error=False, description="an API token: `Authorization: Bearer dvsan_<id>_<secret>`")


def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


def get_pusher(request: Request) -> ExportPusher:
    return request.app.state.pusher  # type: ignore[no-any-return]


def get_wipes(request: Request) -> WipeService:
    return request.app.state.wipes  # type: ignore[no-any-return]


def get_listener(request: Request) -> AutoconfListener:
    return request.app.state.listener  # type: ignore[no-any-return]


def get_tasks(request: Request) -> TaskService:
    return request.app.state.tasks  # type: ignore[no-any-return]


def get_units(request: Request) -> UnitService:
    return request.app.state.units  # type: ignore[no-any-return]


def get_monitor(request: Request) -> StatsService:
    return request.app.state.monitor  # type: ignore[no-any-return]


def get_bus(request: Request) -> EventBus:
    return request.app.state.bus  # type: ignore[no-any-return]


DbDep = Annotated[Database, Depends(get_db)]
TasksDep = Annotated[TaskService, Depends(get_tasks)]
BusDep = Annotated[EventBus, Depends(get_bus)]
PusherDep = Annotated[ExportPusher, Depends(get_pusher)]
WipesDep = Annotated[WipeService, Depends(get_wipes)]
ListenerDep = Annotated[AutoconfListener, Depends(get_listener)]
UnitsDep = Annotated[UnitService, Depends(get_units)]
MonitorDep = Annotated[StatsService, Depends(get_monitor)]


_session = APIKeyCookie(name=auth.SESSION_COOKIE, auto_error=False,
                        description="a console session (POST /api/v1/session); writes also need X-CSRF-Token")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def principal(request: Request, db: DbDep,
              creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
              cookie: Annotated[str | None, Depends(_session)]) -> auth.Principal:
    """Who is calling, from the bearer token or the console's session cookie (whose writes must
    carry the session's CSRF token); 401 without credentials the station takes."""
    if creds is not None and creds.scheme.lower() == "bearer":
        value, request.state.via = creds.credentials, "bearer"
    elif cookie:
        value, request.state.via = cookie, "session"
    else:
        raise Unauthenticated("authentication required: send 'Authorization: Bearer <token>'")
    with db.session() as s:
        who = auth.authenticate(s, value)
    if request.state.via == "session" and request.method not in SAFE_METHODS:
        auth.check_csrf(value, request.headers.get(auth.CSRF_HEADER))
    request.state.principal = who
    return who


def _needs_principal(d: Dependant) -> bool:
    return d.call is principal or any(_needs_principal(sub) for sub in d.dependencies)


async def authenticate_first(request: Request) -> None:
    """Raise Unauthenticated if the route needs a caller and the request names none the station
    takes. FastAPI reads a request's body before it runs the dependencies, so a body it cannot
    read would otherwise be judged (400/422) for a caller who never said who they are."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if getattr(request.state, "principal", None) is not None or dependant is None \
            or not _needs_principal(dependant):
        return
    creds = await _bearer(request)
    cookie = await _session(request)
    await run_in_threadpool(principal, request, get_db(request), creds, cookie)


def require(permission: str) -> Callable[..., auth.Principal]:
    """A dependency: the caller, who must hold `permission` (403 naming it otherwise)."""
    def dep(who: Annotated[auth.Principal, Depends(principal)]) -> auth.Principal:
        who.require(permission)
        return who
    dep.__name__ = f"require_{permission.replace('.', '_')}"
    return dep


Caller = Annotated[auth.Principal, Depends(principal)]
Reader = Annotated[auth.Principal, Depends(require("pool.read"))]
Operator = Annotated[auth.Principal, Depends(require("assignments.write"))]
Wiper = Annotated[auth.Principal, Depends(require("volumes.wipe"))]
HostAdmin = Annotated[auth.Principal, Depends(require("hosts.write"))]
HostReader = Annotated[auth.Principal, Depends(require("hosts.read"))]
Admin = Annotated[auth.Principal, Depends(require("users.admin"))]
UnitAdmin = Annotated[auth.Principal, Depends(require("enrolment.write"))]
