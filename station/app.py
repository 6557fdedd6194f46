"""The station's FastAPI application factory: database, protocol listener, routes, error mapping."""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from dvsan import __version__, identity
from dvsan.errors import (
    Conflict,
    DvsanError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from station.api.deps import authenticate_first
from station.api.routes import assignments as assignment_routes
from station.api.routes import auth as auth_routes
from station.api.routes import disks as disk_routes
from station.api.routes import enrolment as enrolment_routes
from station.api.routes import mirrors as mirror_routes
from station.api.routes import monitoring as monitoring_routes
from station.api.routes import pool as pool_routes
from station.api.routes import tasks as task_routes
from station.api.schemas import ERROR_RESPONSES
from station.console import pages as console
from station.db import Database
from station.listeners import liveness
from station.listeners.autoconf import AutoconfListener
from station.services import audit, auth, tasks
from station.services.chap import ChapVault
from station.services.disks import PartitionService
from station.services.enrolment import EnrolmentGate
from station.services.events import EventBus
from station.services.exports import ExportPusher
from station.services.stats import StatsService
from station.services.units import UnitService
from station.services.wipes import WipeService
from station.settings import StationSettings

log = logging.getLogger(__name__)


_STATUS = [(Unauthenticated, 401), (Forbidden, 403), (NotFound, 404), (Conflict, 409), (InvalidInput, 422),
           (Unavailable, 503)]


TASKS_KEPT = 10_000     # finished tasks kept (the audit log keeps who asked what for longer)


async def _sweep_audit(db: Database, days: int) -> None:
    """Keep the audit log to its retention and the finished tasks to the newest TASKS_KEPT: at
    start, then every six hours."""
    while True:
        def sweep() -> None:
            with db.session() as s:
                audit.sweep(s, days)
                tasks.sweep(s, TASKS_KEPT)
        try:
            await asyncio.to_thread(sweep)
        except Exception as e:  # noqa: BLE001 - a failed sweep is retried at the next round
            log.warning("audit log retention sweep failed: %s", e)
        await asyncio.sleep(6 * 3600)


def create_app(settings: StationSettings) -> FastAPI:
    """Build the station app; nothing is opened until the app starts."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        key = settings.load_cluster_key()
        db = Database(settings.db_url)
        db.migrate()
        station_key = settings.load_identity()
        app.state.station_public_key = identity.encode_public(station_key)
        app.state.station_fingerprint = identity.fingerprint(station_key)
        app.state.enrolment_policy = settings.enrolment
        app.state.auto_replace = settings.auto_replace
        log.info("station key %s; unit enrolment policy: %s", app.state.station_fingerprint,
                 settings.enrolment)
        app.state.enrolment_gate = EnrolmentGate(db, settings.enrolment)
        with db.session() as s:
            n = tasks.interrupt_unfinished(s)
            if n:
                log.warning("%d task(s) were queued or running when the station stopped: marked "
                            "interrupted (their objects are reconciled from the database)", n)
            if auth.user_count(s) == 0:
                log.warning("no user exists: every REST call but /healthz is refused until one does; "
                            "create the first admin with: dvsan-station --data-dir %s create-user NAME "
                            "--role admin", settings.data_dir)
        listener = AutoconfListener(key, signer=identity.Signer(identity.STATION, station_key),
                                    verifier=app.state.enrolment_gate)
        vault = ChapVault.of(settings.load_secrets_key(), key)
        pusher = ExportPusher(db, listener, settings.export_timeout, vault)
        bus = EventBus()
        task_service = tasks.TaskService(db, bus)
        wipes = WipeService(db, listener, settings.export_timeout, task_service)
        units = UnitService(db, listener, pusher, wipes)
        app.state.monitor = listener.monitor = StatsService(db)
        listener.partitions = PartitionService(db, listener, task_service, settings.export_timeout)
        await listener.start(units, wipes, settings.udp_host, settings.udp_port)
        if settings.liveness_timeout > 0:
            units.background(liveness.watch(units, settings.liveness_timeout))
        app.state.db, app.state.listener, app.state.pusher, app.state.units = db, listener, pusher, units
        units.background(_sweep_audit(db, settings.audit_retention_days))
        app.state.wipes, app.state.tasks, app.state.bus = wipes, task_service, bus
        app.state.partitions = listener.partitions
        app.state.snmp = None
        try:
            if settings.snmp_enabled:
                # NOTE: imported here so a station without SNMP never loads pysnmp
                from station.listeners.snmp.receiver import TrapReceiver

                app.state.snmp = TrapReceiver(units, [c.get_secret_value() for c in settings.trap_communities],
                                              settings.snmp_users())
                await app.state.snmp.start(settings.trap_host, settings.trap_port)
            else:
                log.info("SNMP notification receiver off (no --trap-community-file or --trap-v3-user, or trap port 0)")
            yield
        finally:
            if app.state.snmp is not None:
                await app.state.snmp.stop()
            await task_service.stop()
            await units.stop()
            listener.stop()
            db.dispose()

    app = FastAPI(title="dvsan station", version=__version__, lifespan=lifespan,
                  description="Control management station of the dvsan virtual SAN.")
    for r in (pool_routes.router, assignment_routes.router, task_routes.router, auth_routes.router,
              enrolment_routes.router, disk_routes.router, mirror_routes.router):
        app.include_router(r, responses=ERROR_RESPONSES)
    app.include_router(task_routes.events_router)
    monitoring_routes.install(app)
    console.mount(app)

    @app.middleware("http")
    async def _audit(request: Request, call_next: Any) -> Any:
        """Every call that is not a read goes to the audit log, whatever it answered."""
        response = await call_next(request)
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            route = request.scope.get("route")
            who = getattr(request.state, "principal", None)
            entry = (str(who) if who is not None else "anonymous",
                     request.client.host if request.client else "",
                     f"{request.method} {getattr(route, 'path', request.url.path)}", request.url.path,
                     response.status_code, getattr(request.state, "audit", None))

            def write() -> None:
                with request.app.state.db.session() as s:
                    audit.record(s, *entry)
            try:
                await asyncio.to_thread(write)
            except Exception as e:  # noqa: BLE001 - the answer stands; the failure is loud
                log.error("could not write the audit log entry %s: %s", entry[:5], e)
        return response

    @app.exception_handler(DvsanError)
    async def _dvsan_error(request: Request, exc: DvsanError) -> JSONResponse:
        code = next((c for t, c in _STATUS if isinstance(exc, t)), 500)
        if code == 500:
            log.error("unmapped error on %s %s: %s", request.method, request.url.path, exc)
        headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
        return JSONResponse(status_code=code, content={"detail": str(exc), "error": getattr(exc, "kind", None) or type(exc).__name__},
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _refused_input(request: Request, exc: RequestValidationError) -> Response:
        """A body or parameter the schema refuses: 422, once the caller is known (401 first)."""
        try:
            await authenticate_first(request)
        except Unauthenticated as e:
            return await _dvsan_error(request, e)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        """FastAPI's own refusals. The one 400 it makes is a body it could not read at all (not
        UTF-8, nested too deep): bad input like any malformed JSON, so 422 as that is."""
        if exc.status_code == 400:
            return await _refused_input(request, RequestValidationError([{
                "type": "json_invalid", "loc": ("body",), "msg": f"the body could not be read: {exc.detail}",
                "input": None}]))
        return await http_exception_handler(request, exc)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
