"""station.services.tasks and .events on a real migrated SQLite file: tasks are stored, run one at a
time per object, refuse or join where asked, cancel only when queued, end interrupted when the
station stops, and every change reaches the subscribers that may see it (and no other)."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dvsan.errors import Conflict, DvsanError, InsufficientCapacity, NotFound, Unavailable
from station.api.routes.tasks import may_see
from station.db import Database
from station.db.tables import Base, TaskRow, TaskState
from station.services import tasks
from station.services.auth import Principal
from station.services.events import Event, EventBus
from station.services.tasks import Busy, TaskContext, TaskService
from tests.unit.test_allocation_stateful import migrated_db


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = migrated_db(tmp_path)
    yield d
    d.dispose()


def row(db: Database, task_id: int) -> TaskRow:
    with db.session() as s:
        t = s.get_one(TaskRow, task_id)
        s.expunge(t)
        return t


def test_gp_migrations_create_exactly_the_tables_the_code_maps(db: Database) -> None:
    with db.engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
    assert diff == []


def test_gp_a_task_runs_is_stored_and_its_changes_are_published_in_order(db: Database) -> None:
    bus = EventBus()
    seen: list[tuple[str, int, str]] = []

    async def main() -> dict[str, Any]:
        svc = TaskService(db, bus)

        async def listen() -> None:
            async for ev in bus.subscribe(lambda e: True):
                seen.append((ev.data["state"], ev.data["step"], ev.data["message"]))
                if ev.data["state"] == "succeeded":
                    return

        listener = asyncio.create_task(listen())
        await asyncio.sleep(0)

        async def work(ctx: TaskContext) -> dict[str, Any]:
            await ctx.progress(1, 3, "one")
            await ctx.progress(2, 3, "two")
            return {"answer": 42}
        t = await svc.submit("assign", "/hosts/h1", "user:alice", work, host="h1")
        assert t["state"] == "queued" and t["requested_by"] == "user:alice" and t["host"] == "h1"
        done = await svc.wait(t["id"], 10)
        await asyncio.wait_for(listener, 5)
        return done

    done = asyncio.run(main())
    assert done["state"] == "succeeded" and done["result"] == {"answer": 42}
    assert done["step"] == done["total_steps"] == 3
    stored = row(db, done["id"])
    assert (stored.state, stored.result, stored.kind, stored.object) == ("succeeded", '{"answer": 42}', "assign", "/hosts/h1")
    assert stored.started_at is not None and stored.finished_at is not None
    assert seen == [("queued", 0, "queued"), ("running", 0, "running"), ("running", 1, "one"),
                    ("running", 2, "two"), ("succeeded", 3, "succeeded")]


def test_gp_tasks_on_one_object_run_one_after_the_other_and_on_two_objects_at_once(db: Database) -> None:
    log: list[str] = []

    async def main() -> None:
        svc = TaskService(db, EventBus())
        inside: set[str] = set()
        overlap: list[set[str]] = []

        def work(name: str) -> Any:
            async def w(ctx: TaskContext) -> None:
                inside.add(name)
                overlap.append(set(inside))
                log.append(f"start {name}")
                await asyncio.sleep(0.2)
                log.append(f"end {name}")
                inside.discard(name)
            return w
        a = await svc.submit("wipe", "/volumes/1", "station", work("a"))
        b = await svc.submit("release", "/assignments/9", "station", work("b"), lock="/volumes/1")
        c = await svc.submit("wipe", "/volumes/2", "station", work("c"))
        for t in (a, b, c):
            assert (await svc.wait(t["id"], 10))["state"] == "succeeded"
        assert not any({"a", "b"} <= s for s in overlap), "two tasks of one volume ran at once"
        assert any({"a", "c"} <= s or {"b", "c"} <= s for s in overlap), "tasks of two volumes did not overlap"
    asyncio.run(main())
    assert log.index("end a") < log.index("start b")


def test_ep_busy_refuses_and_join_returns_the_task_already_there(db: Database) -> None:
    async def main() -> None:
        svc = TaskService(db, EventBus())
        gate = asyncio.Event()

        async def slow(ctx: TaskContext) -> None:
            await gate.wait()
        first = await svc.submit("wipe", "/volumes/7", "user:op", slow)
        with pytest.raises(Busy, match=rf"/volumes/7 is busy: task {first['id']} \(wipe\)"):
            await svc.submit("wipe", "/volumes/7", "user:op2", slow, busy="refuse")
        joined = await svc.submit("wipe", "/volumes/7", "station", slow, join=True)
        assert joined["id"] == first["id"]
        other = await svc.submit("release", "/assignments/3", "station", slow, lock="/volumes/7", join=True)
        assert other["id"] != first["id"], "join only joins a task of the same kind"
        free = await svc.submit("wipe", "/volumes/8", "user:op", slow, busy="refuse")
        gate.set()
        for t in (first, other, free):
            assert (await svc.wait(t["id"], 10))["state"] == "succeeded"
        assert svc.on("/volumes/7") == [] and "/volumes/7" not in svc._locks
    asyncio.run(main())


def test_ep_only_a_queued_task_is_cancelled_and_its_work_never_runs(db: Database) -> None:
    ran: list[str] = []

    async def main() -> None:
        svc = TaskService(db, EventBus())
        gate = asyncio.Event()

        async def first(ctx: TaskContext) -> None:
            ran.append("first")
            await gate.wait()

        async def second(ctx: TaskContext) -> None:
            ran.append("second")
        a = await svc.submit("wipe", "/volumes/1", "station", first)
        b = await svc.submit("wipe", "/volumes/1", "station", second)
        while a["id"] not in [v["id"] for v in svc.on("/volumes/1") if v["state"] == "running"]:
            await asyncio.sleep(0.01)
        with pytest.raises(Conflict, match="is running: it cannot be cancelled safely"):
            await svc.cancel(a["id"])
        cancelled = await svc.cancel(b["id"])
        assert cancelled["state"] == "cancelled"
        gate.set()
        assert (await svc.wait(a["id"], 10))["state"] == "succeeded"
        with pytest.raises(Conflict, match="has already ended"):
            await svc.cancel(b["id"])
        with pytest.raises(NotFound):
            await svc.cancel(10**6)
    asyncio.run(main())
    assert ran == ["first"]


def test_ep_failures_are_stored_with_their_kind_and_internal_errors_leak_nothing(db: Database) -> None:
    async def main() -> list[dict[str, Any]]:
        svc = TaskService(db, EventBus())

        async def refused(ctx: TaskContext) -> None:
            raise InsufficientCapacity(10, None)

        async def silent(ctx: TaskContext) -> None:
            raise Unavailable("unit unit-a did not answer")

        async def broken(ctx: TaskContext) -> None:
            raise RuntimeError("secret=hunter2 in a traceback")
        out = []
        for w in (refused, silent, broken):
            t = await svc.submit("assign", "/hosts/h", "station", w)
            out.append(await svc.wait(t["id"], 10))
        return out

    refused, silent, broken = asyncio.run(main())
    assert refused["state"] == "failed" and refused["error_kind"] == "InsufficientCapacity"
    assert silent["error_kind"] == "Unavailable" and "did not answer" in silent["error"]
    assert broken["error"] == "internal error: RuntimeError" and "hunter2" not in str(row(db, broken["id"]).__dict__)
    with pytest.raises(Conflict):
        tasks.raise_failure(refused)
    with pytest.raises(Unavailable):
        tasks.raise_failure(silent)
    with pytest.raises(Conflict, match="busy"):
        tasks.raise_failure({"error_kind": "Busy", "error": "busy"})
    with pytest.raises(DvsanError) as e:
        tasks.raise_failure(broken)
    assert type(e.value) is DvsanError      # the station answers 500 for its own fault only


def test_ep_a_station_stop_leaves_no_task_running_and_a_crash_is_caught_at_the_next_start(db: Database) -> None:
    async def main() -> tuple[int, int]:
        svc = TaskService(db, EventBus())

        async def forever(ctx: TaskContext) -> None:
            await asyncio.Event().wait()
        a = await svc.submit("wipe", "/volumes/1", "station", forever)
        b = await svc.submit("wipe", "/volumes/1", "station", forever)
        while not any(v["state"] == "running" for v in svc.on("/volumes/1")):
            await asyncio.sleep(0.01)
        await svc.stop()
        return a["id"], b["id"]

    a, b = asyncio.run(main())
    assert row(db, a).state == TaskState.INTERRUPTED and row(db, b).state == TaskState.CANCELLED
    # a killed station (SIGKILL) leaves rows queued and running: the next start marks them
    with db.session() as s:
        x = tasks.create(s, "assign", "/hosts/h", "station", "h")
        y = tasks.create(s, "wipe", "/volumes/2", "station", None)
        y.state = TaskState.RUNNING
        ids = (x.id, y.id)
    with db.session() as s:
        assert tasks.interrupt_unfinished(s) == 2
    for i in ids:
        t = row(db, i)
        assert t.state == TaskState.INTERRUPTED and t.finished_at is not None and "station stopped" in t.message
    with db.session() as s:
        assert tasks.interrupt_unfinished(s) == 0
        assert row(db, a).state == TaskState.INTERRUPTED


def test_gp_wait_answers_at_the_end_or_with_the_task_as_it_stands(db: Database) -> None:
    async def main() -> None:
        svc = TaskService(db, EventBus())
        gate = asyncio.Event()

        async def w(ctx: TaskContext) -> None:
            await ctx.progress(1, 2, "half")
            await gate.wait()
        t = await svc.submit("wipe", "/volumes/1", "station", w)
        mid = await svc.wait(t["id"], 0.3)
        assert mid["state"] == "running" and mid["message"] == "half"
        gate.set()
        assert (await svc.wait(t["id"], 5))["state"] == "succeeded"
        assert (await svc.get(t["id"]))["state"] == "succeeded"   # from the database now
        with pytest.raises(NotFound):
            await svc.get(12345)
    asyncio.run(main())


def test_gp_query_filters_and_sweep_keeps_the_newest_finished(db: Database) -> None:
    with db.session() as s:
        for i in range(6):
            t = tasks.create(s, "wipe" if i % 2 else "assign", f"/volumes/{i}", "station", "h" if i < 3 else None)
            t.state = TaskState.SUCCEEDED if i != 5 else TaskState.RUNNING
    with db.session() as s:
        assert [t.object for t in tasks.query(s, kind="wipe")] == ["/volumes/5", "/volumes/3", "/volumes/1"]
        assert [t.object for t in tasks.query(s, host="h", limit=2)] == ["/volumes/2", "/volumes/1"]
        assert [t.object for t in tasks.query(s, state="running")] == ["/volumes/5"]
        assert tasks.sweep(s, keep=2) == 4
    with db.session() as s:
        assert [t.object for t in tasks.query(s)] == ["/volumes/5", "/volumes/4"]


def test_ep_the_event_stream_shows_each_caller_only_what_it_may_see() -> None:
    admin = Principal("user", "alice", "admin", 1)
    viewer = Principal("user", "vera", "viewer", 2)
    host_b = Principal("host", "host-b", "host", 3)
    host_c = Principal("host", "host-c", "host", 4)
    b_task = {"host": "host-b", "requested_by": "user:alice"}
    wipe = {"host": None, "requested_by": "station"}
    assert may_see(admin, b_task) and may_see(viewer, b_task) and may_see(viewer, wipe)
    assert may_see(host_b, b_task) and not may_see(host_c, b_task) and not may_see(host_b, wipe)
    assert may_see(host_c, {"host": "host-b", "requested_by": "host:host-c"})   # its own request

    async def main() -> tuple[list[int], list[int]]:
        bus = EventBus()
        got: dict[str, list[int]] = {"b": [], "c": []}

        async def listen(who: Principal, key: str, n: int) -> None:
            async for ev in bus.subscribe(lambda e: may_see(who, e.data)):
                got[key].append(ev.id)
                if len(got[key]) == n:
                    return
        tb = asyncio.create_task(listen(host_b, "b", 2))
        tc = asyncio.create_task(listen(host_c, "c", 1))
        await asyncio.sleep(0)
        bus.publish("task", b_task, "host-b")
        bus.publish("task", wipe)
        bus.publish("task", {"host": "host-c", "requested_by": "host:host-c"}, "host-c")
        bus.publish("task", b_task, "host-b")
        await asyncio.wait_for(asyncio.gather(tb, tc), 5)
        assert bus.subscribers == 0
        return got["b"], got["c"]
    b, c = asyncio.run(main())
    assert b == [1, 4] and c == [3]


def test_ep_a_slow_subscriber_loses_events_is_told_so_and_never_slows_the_station() -> None:
    async def main() -> list[Event]:
        bus = EventBus(backlog=5, queue_size=3)
        it = bus.subscribe(lambda e: True)
        first = await asyncio.wait_for(_start(it, bus), 5)
        for i in range(10):                        # never blocks, whatever the subscriber does
            bus.publish("task", {"n": i})
        out = [first]
        for _ in range(4):
            out.append(await asyncio.wait_for(it.__anext__(), 5))
        await it.aclose()  # type: ignore[attr-defined]
        return out
    out = asyncio.run(main())
    assert out[0].data["n"] == -1
    assert out[1].kind == "lagged" and out[1].data["dropped"] == 7 and "GET /api/v1/tasks" in out[1].data["detail"]
    assert [e.data["n"] for e in out[2:]] == [0, 1, 2]


async def _start(it: Any, bus: EventBus) -> Event:
    nxt = asyncio.ensure_future(it.__anext__())
    await asyncio.sleep(0)
    bus.publish("task", {"n": -1})
    return await nxt  # type: ignore[no-any-return]


def test_gp_a_client_that_reconnects_gets_what_it_missed_from_the_backlog() -> None:
    async def main() -> list[int]:
        bus = EventBus(backlog=3)
        for i in range(5):
            bus.publish("task", {"n": i})
        it = bus.subscribe(lambda e: e.data["n"] != 3, last_id=2)
        got = [(await asyncio.wait_for(it.__anext__(), 5)).id for _ in range(2)]
        await it.aclose()  # type: ignore[attr-defined]
        return got
    assert asyncio.run(main()) == [3, 5]      # 4 hidden by the filter, 1 and 2 seen already


def test_ep_a_task_cancelled_before_its_runner_ever_ran_still_ends_cancelled(db: Database) -> None:
    ran: list[int] = []

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        svc = TaskService(db, EventBus())

        async def w(ctx: TaskContext) -> None:
            ran.append(ctx.id)
        t = await svc.submit("wipe", "/volumes/1", "station", w)
        c = await svc.cancel(t["id"])       # no await in between: its runner has not started
        t2 = await svc.submit("wipe", "/volumes/1", "station", w)
        await svc.stop()                    # likewise
        return c, await svc.get(t2["id"])
    c, t2 = asyncio.run(main())
    assert c["state"] == "cancelled" and t2["state"] == "cancelled" and ran == []


def test_ep_a_task_read_while_its_end_is_being_written_shows_its_result_not_the_stored_json(db: Database) -> None:
    """The end of a task is shown at once and written to its row in a thread: a GET (or an event)
    in between got the result as the row's JSON text, and GET /api/v1/tasks/ID answered 500."""
    bus = EventBus()
    published: list[dict[str, Any]] = []

    class Held(TaskService):
        gate: asyncio.Event | None = None
        entered = asyncio.Event()

        async def _tx(self, fn: Any, *args: Any) -> Any:
            if self.gate is not None:
                self.entered.set()
                await self.gate.wait()
            return await super()._tx(fn, *args)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        svc = Held(db, bus)
        Held.entered = asyncio.Event()

        async def listen() -> None:
            async for ev in bus.subscribe(lambda e: True):
                published.append(ev.data)
                if ev.data["state"] == "succeeded":
                    return
        listener = asyncio.create_task(listen())
        await asyncio.sleep(0)

        async def work(ctx: TaskContext) -> dict[str, Any]:
            svc.gate = asyncio.Event()          # hold the next write: the task's end
            return {"answer": 42}
        t = await svc.submit("wipe", "/volumes/1", "station", work)
        await asyncio.wait_for(svc.entered.wait(), 10)
        during = await svc.get(t["id"])          # the row's write is held
        assert svc.gate is not None
        svc.gate.set()
        done = await svc.wait(t["id"], 10)
        await asyncio.wait_for(listener, 5)
        return during, done

    during, done = asyncio.run(main())
    assert during["state"] == "succeeded" and during["result"] == {"answer": 42}
    assert done["result"] == {"answer": 42}
    assert published[-1]["result"] == {"answer": 42}
    assert row(db, done["id"]).result == '{"answer": 42}'
