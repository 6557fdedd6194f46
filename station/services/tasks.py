"""Tasks: every change asked of the station (assign, release, wipe) is stored and followed.

A task has an id, a kind, the object it changes (`/hosts/host-b`, `/volumes/17`), who asked,
a state (queued, running, succeeded, failed, cancelled, interrupted), progress (step of total and
a message), and a result or an error. Many tasks run at once; tasks on the same object run one
after the other (one lock per object), or the second is refused as busy where waiting makes no
sense (an operator's wipe of a volume already being wiped). Only a queued task can be cancelled:
a running one is in the middle of a change a unit is making.

Tasks are rows of the station's database, written at each state change (and progress at most
every `PROGRESS_EVERY` seconds), so after a station restart the tasks that were running are marked
`interrupted`; their objects are reconciled from the database by the usual means (a unit's next
storage report: pushes and wipes ordered again). Every change is published on the event bus.
"""

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dvsan import errors
from dvsan.errors import Conflict, DvsanError, NotFound
from station.db import Database
from station.db.tables import TASK_FINAL_STATES, TaskRow, TaskState, utcnow
from station.services.events import EventBus

log = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0   # seconds: progress reaches the database at most this often (events: always)


class Busy(Conflict):
    """Another task holds the object and waiting for it makes no sense (HTTP 409)."""


def snapshot(t: TaskRow) -> dict[str, Any]:
    """A task as the API and the event stream show it."""
    return {"id": t.id, "kind": t.kind, "object": t.object, "requested_by": t.requested_by,
            "host": t.host_name, "state": t.state, "step": t.step, "total_steps": t.total_steps,
            "message": t.message, "result": json.loads(t.result) if t.result else None,
            "error": t.error, "error_kind": t.error_kind, "created_at": _iso(t.created_at),
            "started_at": _iso(t.started_at), "finished_at": _iso(t.finished_at)}


def _iso(d: datetime | None) -> str | None:
    """RFC 3339 with its offset (SQLite hands back naive datetimes; they were written in UTC)."""
    if d is None:
        return None
    return (d if d.tzinfo is not None else d.replace(tzinfo=UTC)).isoformat()


def create(s: Session, kind: str, obj: str, requested_by: str, host: str | None) -> TaskRow:
    t = TaskRow(kind=kind, object=obj[:255], requested_by=requested_by[:80], host_name=host,
                state=TaskState.QUEUED, step=0, total_steps=1, message="queued", created_at=utcnow())
    s.add(t)
    s.flush()
    return t


def get(s: Session, task_id: int) -> TaskRow:
    t = s.get(TaskRow, task_id)
    if t is None:
        raise NotFound(f"no task with id {task_id}")
    return t


def query(s: Session, *, state: str | None = None, kind: str | None = None, obj: str | None = None,
          host: str | None = None, requested_by: str | None = None, limit: int = 100) -> list[TaskRow]:
    q = select(TaskRow).order_by(TaskRow.id.desc()).limit(limit)
    if state:
        q = q.where(TaskRow.state == state)
    if kind:
        q = q.where(TaskRow.kind == kind)
    if obj:
        q = q.where(TaskRow.object == obj)
    if host:
        q = q.where(TaskRow.host_name == host)
    if requested_by:
        q = q.where(TaskRow.requested_by == requested_by)
    return list(s.scalars(q))


def interrupt_unfinished(s: Session) -> int:
    """At station start: tasks queued or running when it stopped will never end by themselves."""
    n = s.execute(update(TaskRow).where(TaskRow.state.in_((TaskState.QUEUED, TaskState.RUNNING)))
                  .values(state=TaskState.INTERRUPTED, finished_at=utcnow(),
                          message="the station stopped while this task was queued or running; its "
                                  "object was reconciled from the database")).rowcount  # type: ignore[attr-defined]
    return int(n or 0)


def sweep(s: Session, keep: int) -> int:
    """Keep the newest `keep` finished tasks (the audit log keeps who did what for longer)."""
    cutoff = s.scalars(select(TaskRow.id).order_by(TaskRow.id.desc()).offset(keep).limit(1)).first()
    if cutoff is None:
        return 0
    n = s.execute(TaskRow.__table__.delete().where(  # type: ignore[attr-defined]
        TaskRow.id <= cutoff, TaskRow.state.in_(TASK_FINAL_STATES))).rowcount
    return int(n or 0)


class TaskContext:
    """What a running task reports through: progress, and its own id."""

    def __init__(self, service: "TaskService", task_id: int):
        self.service, self.id = service, task_id

    async def progress(self, step: int, total: int, message: str) -> None:
        await self.service._progress(self.id, step, total, message)


Work = Callable[[TaskContext], Awaitable[dict[str, Any] | None]]


@dataclass
class _Live:
    """A task this station run is carrying: its snapshot, lock key and completion."""

    view: dict[str, Any]
    lock: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    runner: asyncio.Task[None] | None = None
    last_write: float = 0.0


class TaskService:
    def __init__(self, db: Database, bus: EventBus):
        self.db, self.bus = db, bus
        self._locks: dict[str, asyncio.Lock] = {}
        self._live: dict[int, _Live] = {}

    async def _tx(self, fn: Callable[..., Any], *args: Any) -> Any:
        def run() -> Any:
            with self.db.session() as s:
                return fn(s, *args)
        return await asyncio.to_thread(run)

    def _publish(self, view: dict[str, Any]) -> None:
        self.bus.publish("task", dict(view), view.get("host"))

    def on(self, lock: str) -> list[dict[str, Any]]:
        """The tasks queued or running on an object (lock key), oldest first."""
        return [lv.view for _, lv in sorted(self._live.items()) if lv.lock == lock]

    async def submit(self, kind: str, obj: str, requested_by: str, work: Work, *,
                     host: str | None = None, lock: str | None = None, busy: str = "queue",
                     join: bool = False) -> dict[str, Any]:
        """Store a new task and start it; returns its snapshot (state `queued`).

        `lock` (default: `obj`) is the object whose tasks run one at a time. `busy="refuse"`:
        raise Busy if another task is queued or running on it. `join`: if a task of the same kind
        is already queued or running on it, return that one instead of starting another.
        """
        key = lock or obj
        others = self.on(key)
        if join:
            same = [v for v in others if v["kind"] == kind]
            if same:
                return dict(same[0])
        if busy == "refuse" and others:
            o = others[0]
            raise Busy(f"{obj} is busy: task {o['id']} ({o['kind']}) is {o['state']} on it; "
                       f"try again when it has ended (GET /api/v1/tasks/{o['id']})")

        def add(s: Session) -> dict[str, Any]:
            return snapshot(create(s, kind, obj, requested_by, host))
        view = await self._tx(add)
        live = _Live(view, key)
        self._live[view["id"]] = live
        self._publish(view)
        live.runner = asyncio.create_task(self._run(view["id"], work), name=f"task-{view['id']}-{kind}")
        return dict(view)

    async def _run(self, task_id: int, work: Work) -> None:
        live = self._live[task_id]
        lock = self._locks.setdefault(live.lock, asyncio.Lock())
        try:
            async with lock:
                await self._set(task_id, state=TaskState.RUNNING, started_at=utcnow(), message="running")
                try:
                    result = await work(TaskContext(self, task_id))
                except DvsanError as e:
                    await self._finish(task_id, TaskState.FAILED, error=str(e), error_kind=type(e).__name__)
                except asyncio.CancelledError:
                    await asyncio.shield(self._finish(task_id, TaskState.INTERRUPTED,
                                                      error="the station stopped while this task ran"))
                    raise
                except Exception as e:
                    log.exception("task %d (%s %s) failed unexpectedly", task_id, live.view["kind"],
                                  live.view["object"])
                    await self._finish(task_id, TaskState.FAILED, error=f"internal error: {type(e).__name__}",
                                       error_kind="DvsanError")
                else:
                    await self._finish(task_id, TaskState.SUCCEEDED, result=result)
        except asyncio.CancelledError:
            if live.view["state"] == TaskState.QUEUED:     # cancelled while it waited for the lock
                await asyncio.shield(self._finish(task_id, TaskState.CANCELLED, message="cancelled while queued"))
            raise
        finally:
            if not lock.locked() and not self.on(live.lock):
                self._locks.pop(live.lock, None)

    async def _set(self, task_id: int, *, write: bool = True, row: dict[str, Any] | None = None,
                   **values: Any) -> None:
        """Change the task's live view (what readers and subscribers get) and, with `write`, its
        row; `row` holds values stored in another form than the view shows (the result as JSON)."""
        live = self._live[task_id]
        live.view.update({k: (_iso(v) if isinstance(v, datetime) else v) for k, v in values.items()})
        if write:
            def store(s: Session) -> None:
                t = s.get_one(TaskRow, task_id)
                for k, v in {**values, **(row or {})}.items():
                    setattr(t, k, v)
            write_done = asyncio.ensure_future(self._tx(store))
            try:
                await asyncio.shield(write_done)
            except asyncio.CancelledError:
                # NOTE: the write goes on in its thread; let it land before the task's next
                # (final) write, or an `interrupted` could be overwritten by a late `running`.
                await write_done
                raise
            live.last_write = time.monotonic()
        self._publish(live.view)

    async def _progress(self, task_id: int, step: int, total: int, message: str) -> None:
        live = self._live[task_id]
        due = time.monotonic() - live.last_write >= PROGRESS_EVERY
        await self._set(task_id, write=due, step=max(0, step), total_steps=max(1, total),
                        message=message[:255])

    async def _finish(self, task_id: int, state: TaskState, *, result: dict[str, Any] | None = None,
                      error: str | None = None, error_kind: str | None = None,
                      message: str | None = None) -> None:
        live = self._live[task_id]
        values: dict[str, Any] = {"state": state, "finished_at": utcnow(),
                                  "message": (message or (error or state.value))[:255]}
        row: dict[str, Any] = {}
        if result is not None:
            # NOTE: the view gets the result as it is, the row as JSON: a reader (GET /tasks/ID) or
            # a subscriber served while the row is written must never see the JSON text
            values["result"] = result
            row["result"] = json.dumps(result, sort_keys=True, default=str)[:2048]
        if error is not None:
            values["error"], values["error_kind"] = error[:1024], error_kind
        # progress is written at most every PROGRESS_EVERY: the final row carries the last one
        values["total_steps"] = live.view["total_steps"]
        values["step"] = live.view["total_steps"] if state == TaskState.SUCCEEDED else live.view["step"]
        await self._set(task_id, row=row, **values)
        self._live.pop(task_id, None)
        live.done.set()

    async def get(self, task_id: int) -> dict[str, Any]:
        live = self._live.get(task_id)
        if live is not None:
            return dict(live.view)
        return await self._tx(lambda s: snapshot(get(s, task_id)))  # type: ignore[no-any-return]

    async def wait(self, task_id: int, seconds: float) -> dict[str, Any]:
        """The task once it has ended, or as it stands after `seconds`."""
        live = self._live.get(task_id)
        if live is not None and seconds > 0:
            try:
                await asyncio.wait_for(live.done.wait(), seconds)
            except TimeoutError:
                return dict(live.view)
        return await self.get(task_id)

    async def cancel(self, task_id: int) -> dict[str, Any]:
        """Cancel a queued task; a running one is refused (its change is under way on a unit)."""
        live = self._live.get(task_id)
        if live is None:
            view = await self.get(task_id)
            raise Conflict(f"task {task_id} has already ended ({view['state']})")
        if live.view["state"] != TaskState.QUEUED:
            raise Conflict(f"task {task_id} ({live.view['kind']}) is running: it cannot be cancelled "
                           "safely; wait for it to end")
        assert live.runner is not None
        live.runner.cancel()
        await self._settle(live)
        return await self.get(task_id)

    async def _settle(self, live: _Live) -> None:
        """After cancelling a runner: a runner cancelled before its first step ran no handler."""
        if live.runner is not None:
            await asyncio.gather(live.runner, return_exceptions=True)
        if not live.done.is_set():
            queued = live.view["state"] == TaskState.QUEUED
            await self._finish(live.view["id"], TaskState.CANCELLED if queued else TaskState.INTERRUPTED,
                               message="cancelled while queued" if queued else None,
                               error=None if queued else "the station stopped while this task ran")

    async def stop(self) -> None:
        """The station is stopping: running tasks end `interrupted`, queued ones `cancelled`."""
        lives = list(self._live.values())
        for lv in lives:
            if lv.runner is not None:
                lv.runner.cancel()
        for lv in lives:
            await self._settle(lv)


_KINDS: dict[str, type[DvsanError]] = {c.__name__: c for c in (
    errors.InvalidInput, errors.NotFound, errors.Forbidden, errors.Conflict, errors.Unavailable)}
_KINDS.update({"InsufficientCapacity": errors.Conflict, "InsufficientPair": errors.Conflict,
               "Busy": errors.Conflict})


def raise_failure(view: dict[str, Any]) -> None:
    """Raise the error a failed task ended with, as its kind (a `?wait` answer: 404, 409, 503...)."""
    kind = view.get("error_kind") or ""
    cls = _KINDS.get(kind, DvsanError)
    e = cls(view.get("error") or view.get("message") or f"task {view.get('id')} failed")
    if kind in _KINDS:
        e.kind = kind  # type: ignore[attr-defined]  # the answer names the error as the task did
    raise e
