"""The station's FastAPI application factory: database, protocol listener, routes, error mapping."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from dvsan import __version__, identity
from dvsan.errors import Conflict, DvsanError, InvalidInput, NotFound, Unavailable
from station.api.routes.assignments import router
from station.api.routes.enrolment import router as enrolment_router
from station.db import Database
from station.listeners import liveness
from station.listeners.autoconf import AutoconfListener
from station.services.enrolment import EnrolmentGate
from station.services.exports import ExportPusher
from station.services.units import UnitService
from station.services.wipes import WipeService
from station.settings import StationSettings

log = logging.getLogger(__name__)

_STATUS = [(NotFound, 404), (Conflict, 409), (InvalidInput, 422), (Unavailable, 503)]


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
        log.info("station key %s; unit enrolment policy: %s", app.state.station_fingerprint,
                 settings.enrolment)
        app.state.enrolment_gate = EnrolmentGate(db, settings.enrolment)
        listener = AutoconfListener(key, signer=identity.Signer(identity.STATION, station_key),
                                    verifier=app.state.enrolment_gate)
        pusher = ExportPusher(db, listener, settings.export_timeout)
        wipes = WipeService(db, listener, settings.export_timeout)
        units = UnitService(db, listener, pusher, wipes)
        await listener.start(units, wipes, settings.udp_host, settings.udp_port)
        if settings.liveness_timeout > 0:
            units.background(liveness.watch(units, settings.liveness_timeout))
        app.state.db, app.state.listener, app.state.pusher, app.state.units = db, listener, pusher, units
        app.state.wipes = wipes
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
            await units.stop()
            listener.stop()
            db.dispose()

    app = FastAPI(title="dvsan station", version=__version__, lifespan=lifespan,
                  description="Control management station of the dvsan virtual SAN.")
    app.include_router(router)
    app.include_router(enrolment_router)

    @app.exception_handler(DvsanError)
    async def _dvsan_error(request: Request, exc: DvsanError) -> JSONResponse:
        code = next((c for t, c in _STATUS if isinstance(exc, t)), 500)
        if code == 500:
            log.error("unmapped error on %s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(status_code=code, content={"detail": str(exc), "error": type(exc).__name__})

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    return app
