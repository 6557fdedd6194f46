"""REST routes of tasks (`GET /api/v1/tasks`, one task, cancel) and the live event stream (SSE).

Who sees what: staff (pool.read) every task; a host token the tasks of its own host's storage;
anyone the tasks they asked for. The event stream is filtered the same way.
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import JSONResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from dvsan.errors import NotFound
from station.api.deps import BusDep, Caller, TasksDep
from station.api.schemas import IdPath, TaskPublic
from station.db.tables import TASK_FINAL_STATES, TaskState
from station.services import auth
from station.services import tasks as task_rows
from station.services.tasks import TaskService, raise_failure

router = APIRouter(prefix="/api/v1", tags=["tasks"])
Wait = Annotated[float | None, Query(ge=0, le=3600, description=(
    "block up to this many seconds for the task to end; then answer as the operation itself "
    "(its result, or its error's status); still running: 202 with the task"))]
TASK_ACCEPTED: dict[int | str, dict[str, Any]] = {
    202: {"model": TaskPublic, "description": "the task, still queued or running (no `?wait`, or it "
                                              "did not end in time): follow it at its Location"}}


def may_see(who: auth.Principal, view: dict[str, Any]) -> bool:
    return (who.may("pool.read") or view.get("requested_by") == str(who)
            or (who.may("host.storage") and view.get("host") == who.name))


def accepted(view: dict[str, Any]) -> JSONResponse:
    return JSONResponse(status_code=202, content=TaskPublic(**view).model_dump(mode="json"),
                        headers={"Location": f"/api/v1/tasks/{view['id']}"})


async def settle(tasks: TaskService, view: dict[str, Any], wait: float | None) -> dict[str, Any] | None:
    """The ended task's view if it ended within `wait` and succeeded; raises its error if it failed;
    None if there is no `wait` or it is still running (answer 202 with it: `accepted`)."""
    if not wait:
        return None
    view = await tasks.wait(view["id"], wait)
    if view["state"] == TaskState.SUCCEEDED:
        return view
    if view["state"] in TASK_FINAL_STATES:
        if view["state"] != TaskState.FAILED:
            view = {**view, "error_kind": "Conflict",
                    "error": f"task {view['id']} was {view['state']}: {view['message']}"}
        raise_failure(view)
    return None


@router.get("/tasks", response_model=list[TaskPublic])
async def list_tasks(tasks: TasksDep, who: Caller,
                     state: Annotated[str | None, Query(pattern="^(queued|running|succeeded|failed|cancelled|interrupted)$")] = None,
                     kind: Annotated[str | None, Query(max_length=32)] = None,
                     object: Annotated[str | None, Query(max_length=255)] = None,
                     host: Annotated[str | None, Query(max_length=63)] = None,
                     limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[TaskPublic]:
    """Tasks, newest first (what the caller may see), with filters."""
    def load() -> list[dict[str, Any]]:
        with tasks.db.session() as s:
            return [task_rows.snapshot(t) for t in task_rows.query(
                s, state=state, kind=kind, obj=object, host=host, limit=limit)]
    views = await run_in_threadpool(load)
    return [TaskPublic(**v) for v in views if may_see(who, v)]


@router.get("/tasks/{task_id}", response_model=TaskPublic)
async def get_task(task_id: IdPath, tasks: TasksDep, who: Caller,
                   wait: Annotated[float | None, Query(ge=0, le=3600, description="block up to this many seconds for it to end")] = None
                   ) -> TaskPublic:
    view = await (tasks.wait(task_id, wait) if wait else tasks.get(task_id))
    if not may_see(who, view):
        raise NotFound(f"no task with id {task_id}")
    return TaskPublic(**view)


@router.post("/tasks/{task_id}/cancel", response_model=TaskPublic)
async def cancel_task(task_id: IdPath, tasks: TasksDep, who: Caller) -> TaskPublic:
    """Cancel a queued task (409 for a running one: its change is under way on a unit)."""
    view = await tasks.get(task_id)
    if not may_see(who, view):
        raise NotFound(f"no task with id {task_id}")
    if view.get("requested_by") != str(who):
        who.require("assignments.write")
    return TaskPublic(**await tasks.cancel(task_id))


# NOTE: its own router, without the routers' error responses: FastAPI would document those under
# the route's media type (text/event-stream), where the errors are JSON.
events_router = APIRouter(prefix="/api/v1", tags=["tasks"])
_JSON_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorPublic"}}}


@events_router.get("/events", response_class=EventSourceResponse, responses={
    200: {"description": "Server-Sent Events: `event: task` with the task as JSON at every change; "
                         "`event: lagged` if this client fell behind and lost events"},
    401: {"description": "no credentials, or a token the station does not take", "content": _JSON_ERROR,
          "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}},
    422: {"description": "a Last-Event-ID that is not a number", "content": {"application/json": {"schema": {
        "anyOf": [{"$ref": "#/components/schemas/ValidationErrorPublic"},
                  {"$ref": "#/components/schemas/ErrorPublic"}]}}}}})
async def events(bus: BusDep, who: Caller,
                 last_event_id: Annotated[str | None, Header(max_length=20, pattern="^[0-9]+$")] = None
                 ) -> AsyncIterator[ServerSentEvent]:
    """Live task progress and state changes, filtered to what the caller may see. Reconnect with
    `Last-Event-ID` to get what was missed (from a short backlog)."""
    last = int(last_event_id) if last_event_id else None
    async for ev in bus.subscribe(lambda e: may_see(who, e.data), last):
        yield ServerSentEvent(data=ev.data, event=ev.kind, id=str(ev.id) if ev.id else None)
