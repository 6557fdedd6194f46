"""The station's own allocation path, driven statefully: station.services.assignments and station.services.pool on a
real SQLite database (station/db/database.py, migrated by Alembic), raced by threads.

Hypothesis brings units and volumes, takes units down and back, loses devices, asks for storage
one at a time and many at once, and releases. The test keeps a model only of what was *done*
(which volumes exist, which units are up, what was assigned); what is free and what fits is
always asked of the station: its free-volume query, its best fit, its UNIQUE(volume_id)
constraint and its retry. Remove the constraint and `race` gives one volume to two hosts;
offer assigned volumes as free and `request`, `race` and `free_is_exactly_the_unassigned_online`
fail (issue 18 hole 1).
"""

import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    precondition,
    rule,
)
from sqlalchemy import func, select

from dvsan.errors import Conflict, InsufficientCapacity
from dvsan.model import Partition
from station.db import Database
from station.db.tables import AssignmentRow, VolumeRow
from station.services import assignments, pool, wipes

MiB = 1024**2
UNITS = ("unit-a", "unit-b", "unit-c")
HOSTS = ("host-1", "host-2", "host-3", "host-4")

_template: Path | None = None


def migrated_db(where: Path) -> Database:
    """A fresh, migrated station database (one Alembic run per session, then a file copy)."""
    global _template
    if _template is None:
        d = Path(tempfile.mkdtemp(prefix="dvsan-alloc-template-"))
        db = Database(f"sqlite:///{d / 'station.db'}")
        db.migrate()
        db.dispose()
        _template = d / "station.db"
    shutil.copy(_template, where / "station.db")
    return Database(f"sqlite:///{where / 'station.db'}")


@dataclass
class Vol:
    unit: str
    device: str
    size: int
    reported: bool = True       # False once its unit stopped reporting it (missing)


def partition(v: Vol, number: int) -> Partition:
    blocks = v.size // 512
    start = 2048 + number * 2**24
    return Partition(device=v.device, disk="vdq", number=number, start_lba=start, length_blocks=blocks,
                     end_lba=start + blocks - 1, block_size=512, size_bytes=v.size)


class StationAllocation(RuleBasedStateMachine):
    """What was done to a real station database, and what its allocation must answer."""

    held = Bundle("assignments")

    @initialize()
    def fresh_station(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dvsan-alloc-"))
        self.db = migrated_db(self.dir)
        self.vols: dict[str, list[Vol]] = {u: [] for u in UNITS}
        self.up = dict.fromkeys(UNITS, False)
        self.assigned: dict[int, tuple[str, int, int]] = {}   # assignment id -> (host, requested, volume id)
        self.dirty: set[int] = set()    # volumes released and not yet wiped: never handed out
        self.n = 0

    def teardown(self) -> None:
        self.db.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    # --- what the units do (through the pool service, as the station's listener calls it) ----------

    def report(self, unit: str) -> None:
        parts = [partition(v, i) for i, v in enumerate(self.vols[unit], 1) if v.reported]
        with self.db.session() as s:
            pool.record_startup(s, unit, ("127.0.0.1", 7478), "127.0.0.1", 3260, None, "test")
            pool.record_storage_info(s, unit, parts)
        self.up[unit] = True

    @rule(unit=st.sampled_from(UNITS), mib=st.integers(1, 64))
    def add_volume(self, unit: str, mib: int) -> None:
        self.n += 1
        self.vols[unit].append(Vol(unit, f"vdq{self.n}", mib * 16 * MiB))
        self.report(unit)

    @rule(unit=st.sampled_from(UNITS), how=st.sampled_from(pool.UNIT_DOWN_STATES))
    def unit_goes_down(self, unit: str, how: str) -> None:
        if not self.up[unit]:
            return
        with self.db.session() as s:
            pool.record_shutdown(s, unit, how)
        self.up[unit] = False

    @rule(unit=st.sampled_from(UNITS))
    def unit_comes_back(self, unit: str) -> None:
        if self.vols[unit]:
            self.report(unit)

    @rule(data=st.data())
    def a_device_goes_missing(self, data: st.DataObject) -> None:
        present = [v for vs in self.vols.values() for v in vs if v.reported and self.up[v.unit]]
        if present:
            v = data.draw(st.sampled_from(present))
            v.reported = False
            self.report(v.unit)

    # --- what the hosts do -------------------------------------------------------------------------

    def volume_ids(self) -> dict[tuple[str, str], int]:
        with self.db.session() as s:
            return {(u, d): i for i, u, d in s.execute(select(VolumeRow.id, VolumeRow.unit_name, VolumeRow.device))}

    def expected_free(self) -> dict[int, int]:
        """volume id -> size, of what was reported by a unit that is up and is not assigned."""
        ids = self.volume_ids()
        taken = {vid for _, _, vid in self.assigned.values()} | self.dirty
        return {ids[(v.unit, v.device)]: v.size for vs in self.vols.values() for v in vs
                if v.reported and self.up[v.unit] and ids[(v.unit, v.device)] not in taken}

    def allocate(self, host: str, size: int) -> int:
        return assignments.allocate(self.db, host, f"iqn.2026-11.org.dvsan.lab:{host}", "127.0.0.2", size)

    def volume_of(self, aid: int) -> tuple[int, int]:
        with self.db.session() as s:
            a = assignments.get(s, aid)
            return a.volume_id, a.volume.size_bytes

    @rule(target=held, host=st.sampled_from(HOSTS), mib=st.integers(1, 1100))
    def request(self, host: str, mib: int) -> int | None:
        size = mib * MiB
        free = self.expected_free()
        fits = {vid: sz for vid, sz in free.items() if sz >= size}
        try:
            aid = self.allocate(host, size)
        except InsufficientCapacity as e:
            assert not fits, f"refused {size} although free volumes fit: {fits}"
            assert e.largest_free == (max(free.values()) if free else None)
            return None
        vid, got = self.volume_of(aid)
        assert vid in free, f"volume {vid} was not free (assigned, down or missing)"
        assert got == min(fits.values()), "not the best fit"
        self.assigned[aid] = (host, size, vid)
        return aid

    @precondition(lambda self: len(self.expected_free()) >= 2)
    @rule(n=st.integers(2, 6), mib=st.integers(1, 64))
    def race(self, n: int, mib: int) -> None:
        """n hosts at once: each gets its own volume or a clear refusal; the pool agrees after."""
        size = mib * MiB
        free = self.expected_free()
        fits = sum(1 for sz in free.values() if sz >= size)
        start = threading.Barrier(n)
        got: list[int] = []
        refused: list[Conflict] = []

        def one(i: int) -> None:
            start.wait()
            try:
                got.append(self.allocate(f"host-r{i}", size))
            except Conflict as e:
                refused.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(got) + len(refused) == n, "a request was lost"
        assert len(got) == min(n, fits), f"{len(got)} of {n} served with {fits} fitting volumes: {refused}"
        assert all(isinstance(e, InsufficientCapacity) for e in refused), refused
        vids = [self.volume_of(a)[0] for a in got]
        assert len(set(vids)) == len(vids), f"one volume given twice: {vids}"
        assert set(vids) <= set(free)
        for a, vid in zip(got, vids, strict=True):
            self.assigned[a] = ("host-r", size, vid)

    @rule(aid=consumes(held))
    def release(self, aid: int | None) -> None:
        if aid is None:
            return
        with self.db.session() as s:
            assignments.delete(s, aid)
        self.dirty.add(self.assigned.pop(aid)[2])

    def wipe_ends(self, data: st.DataObject, state: str) -> None:
        """A released volume's unit reports the end of its wipe, through the station's own path
        (station.services.wipes: prepare the order, the unit's ACK, its final WIPE_STATUS)."""
        ids = self.volume_ids()
        up = sorted(ids[(v.unit, v.device)] for vs in self.vols.values() for v in vs
                    if v.reported and self.up[v.unit] and ids[(v.unit, v.device)] in self.dirty)
        if not up:
            return
        vid = data.draw(st.sampled_from(up))
        with self.db.session() as s:
            order = wipes.prepare(s, vid)
            assert order is not None, f"volume {vid} needs a wipe but none is ordered"
            v = s.get_one(VolumeRow, vid)
            size = v.length_blocks * v.block_size
            wipe_id = order.body["wipe_id"]
            assert wipes.record_answer(s, vid, wipe_id, {"status": "accepted", "method": "direct",
                                                        "done_bytes": 0, "total_bytes": size}) == "running"
        with self.db.session() as s:
            done = size if state == "succeeded" else size // 2
            wipes.record_status(s, order.body["unit"], {
                "device": order.body["device"], "wipe_id": wipe_id, "state": state, "done_bytes": done,
                "total_bytes": size, "method": "direct", "elapsed_s": 0.1, "error": "EIO"})
        if state == "succeeded":
            self.dirty.discard(vid)

    @rule(data=st.data())
    def a_wipe_succeeds(self, data: st.DataObject) -> None:
        self.wipe_ends(data, "succeeded")

    @rule(data=st.data())
    def a_wipe_fails(self, data: st.DataObject) -> None:
        self.wipe_ends(data, "failed")

    # --- what must always hold, read from the database -----------------------------------------

    @invariant()
    def no_volume_is_assigned_twice(self) -> None:
        with self.db.session() as s:
            twice = s.execute(select(AssignmentRow.volume_id).group_by(AssignmentRow.volume_id)
                              .having(func.count() > 1)).all()
        assert twice == []

    @invariant()
    def the_database_holds_what_was_assigned(self) -> None:
        with self.db.session() as s:
            rows = {a.id: (a.requested_bytes, a.volume_id, a.volume.size_bytes) for a in assignments.list_all(s)}
        assert {aid: (req, vid) for aid, (req, vid, _) in rows.items()} == \
            {aid: (req, vid) for aid, (_, req, vid) in self.assigned.items()}
        assert all(size >= req for req, _, size in rows.values())

    @invariant()
    def free_is_exactly_the_unassigned_online(self) -> None:
        with self.db.session() as s:
            offered = {c.volume_id: c.size_bytes for c in assignments.free_candidates(s)}
        assert offered == self.expected_free()


StationAllocation.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestStationAllocation = StationAllocation.TestCase
