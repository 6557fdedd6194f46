"""REST routes of monitoring: a unit's recent samples (`/api/v1/units/{name}/stats`) and `GET /metrics`.

`/metrics` is Prometheus's text format; like every route but /healthz it needs a credential (a
viewer's API token is enough: Prometheus sends it with `authorization: credentials_file`, see
docs/monitoring.md). The REST latency histogram is fed by a middleware installed with `install()`.
"""

import time
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from dvsan.errors import NotFound
from station.api.deps import Caller, DbDep, ListenerDep, Reader
from station.api.schemas import ERROR_RESPONSES, NamePath, UnitStatsPublic
from station.db.tables import UnitRow
from station.services.metrics import Metrics, Snapshot, render
from station.services.stats import StatsService

router = APIRouter(tags=["monitoring"])
# NOTE: /metrics on a router of its own, without the routers' error responses: FastAPI would
# document those under the route's media type (text/plain), where the errors are JSON.
metrics_router = APIRouter(tags=["monitoring"])
_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorPublic"}}}
# NOTE: long-lived streams would only fill the histogram's +Inf bucket
_NOT_TIMED = frozenset({"/api/v1/events"})


def _monitor(request: Request) -> StatsService:
    return request.app.state.monitor  # type: ignore[no-any-return]


@router.get("/api/v1/units/{name}/stats", response_model=UnitStatsPublic)
async def unit_stats(name: NamePath, db: DbDep, who: Caller, request: Request,
                     minutes: Annotated[int, Query(ge=1, le=60, description="how far back (at most 60)")] = 60
                     ) -> UnitStatsPublic:
    """A unit's recent monitoring samples, oldest first: its CPU share, storage-NIC bytes and rates
    (`samples`), and each exported volume's read/write bytes and commands with rates (`volumes`).
    Rates are per second since the sample before (null for the first one the station kept)."""
    def check() -> None:
        with db.session() as s:
            if s.get(UnitRow, name) is None:
                if not who.may_somewhere("pool.read"):
                    who.require("pool.read")
                raise NotFound(f"no unit {name!r}")
        who.require("pool.read", f"/units/{name}")
    await run_in_threadpool(check)
    store = _monitor(request).store
    since = time.time() * 1000 - minutes * 60_000
    return UnitStatsPublic.model_validate({
        "unit": name, "minutes": minutes, "resolution_s": store.resolution_ms / 1000,
        "samples": store.unit_samples(name, since), "latest": store.latest_units().get(name),
        "volumes": store.volume_samples(name, since)})


@metrics_router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text exposition format 0.0.4",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
    401: {"description": "no credentials, or a token the station does not take", "content": _JSON_ERROR,
          "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}},
    403: {"description": "the caller lacks the permission the message names (pool.read)",
          "content": _JSON_ERROR}})
async def metrics(request: Request, db: DbDep, listener: ListenerDep, _: Reader) -> Response:
    """The station's figures for Prometheus: pool bytes and volumes by state, units by state, tasks
    by kind and state, protocol/SNMP/STATS counters, units' CPU/memory/NIC, per-volume I/O, and the
    REST latency histogram. Needs a credential like every route (a viewer's token will do)."""
    snmp = getattr(request.app.state, "snmp", None)
    store = _monitor(request).store
    snap = Snapshot(protocol=dict(listener.stats), snmp=dict(snmp.stats) if snmp is not None else None,
                    stats=dict(store.counts), units=store.latest_units(), volumes=store.latest_volumes())
    body = await run_in_threadpool(render, request.app.state.metrics, db, snap)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def install(app: FastAPI) -> None:
    """Give the app its own registry, time every REST call, and serve the routes above."""
    app.state.metrics = m = Metrics()
    app.include_router(router, responses=ERROR_RESPONSES)
    app.include_router(metrics_router)

    @app.middleware("http")
    async def _timed(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            if path not in _NOT_TIMED:
                m.latency.labels(request.method, path, str(status)).observe(time.perf_counter() - start)
