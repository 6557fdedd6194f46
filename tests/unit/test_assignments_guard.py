"""station.services.assignments on a real migrated SQLite database: what an assignment records, who sees it,
and what a release leaves behind (mutation survivors of docs/testing.md, killed here)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from dvsan.errors import Conflict, InsufficientCapacity, InvalidInput, NotFound
from dvsan.naming import target_iqn, volume_wwn
from station.db import Database
from station.db.tables import PendingDropRow, UnitRow, VolumeRow
from station.services import assignments, pool, wipes
from tests.unit.test_allocation_stateful import Vol, migrated_db, partition

MiB = 1024**2


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = migrated_db(tmp_path)
    yield d
    d.dispose()


def unit_with(db: Database, unit: str, *mib: int) -> None:
    parts = [partition(Vol(unit, f"vdq{i}", m * MiB), i) for i, m in enumerate(mib, 1)]
    with db.session() as s:
        pool.record_startup(s, unit, ("127.0.0.1", 7478), "127.0.0.1", 3260, None, "test")
        pool.record_storage_info(s, unit, parts)


def give(db: Database, host: str, mib: int) -> int:
    return assignments.allocate(db, host, f"iqn.2026-11.org.dvsan.lab:{host}", "127.0.0.2", mib * MiB)


def wiped(db: Database, volume_id: int) -> None:
    """The volume's unit zeroed it: the station's own path (order, ACK, final WIPE_STATUS)."""
    with db.session() as s:
        order = wipes.prepare(s, volume_id)
        assert order is not None
        wipes.record_answer(s, volume_id, order.body["wipe_id"], {"status": "accepted", "method": "direct"})
        v = s.get_one(VolumeRow, volume_id)
        size = v.length_blocks * v.block_size
        assert wipes.record_status(s, v.unit_name, {
            "device": v.device, "wipe_id": order.body["wipe_id"], "state": "succeeded",
            "done_bytes": size, "total_bytes": size, "method": "direct", "elapsed_s": 1.0}) == "clean"


def generation(db: Database, unit: str) -> int:
    with db.session() as s:
        return pool.get_unit(s, unit).generation


def test_gp_an_assignment_records_lun_0_its_target_and_the_derived_serial(db):
    unit_with(db, "unit-a", 64, 128)
    aid = give(db, "host-1", 100)
    with db.session() as s:
        a = assignments.get(s, aid)
        v = a.volume
        assert (a.lun, a.host_name, a.requested_bytes, a.host_address) == (0, "host-1", 100 * MiB, "127.0.0.2")
        assert a.initiator_iqn == "iqn.2026-11.org.dvsan.lab:host-1"
        assert a.target_iqn == target_iqn("unit-a", v.device) == "iqn.2026-11.org.dvsan:unit-a:vdq2"
        pid = pool.pool_id(s)
        assert a.wwn == volume_wwn(pid, "unit-a", v.device, v.start_lba, v.length_blocks, v.block_size, v.uid)
        assert a.wwn != volume_wwn("another-pool", "unit-a", v.device, v.start_lba, v.length_blocks,
                                   v.block_size, v.uid)
        assert a.export_state == "pending"


def test_gp_allocation_and_release_each_bump_the_units_generation(db):
    unit_with(db, "unit-a", 64)
    unit_with(db, "unit-b", 64)
    g_a, g_b = generation(db, "unit-a"), generation(db, "unit-b")
    aid = give(db, "host-1", 10)
    assert (generation(db, "unit-a"), generation(db, "unit-b")) == (g_a + 1, g_b)
    with db.session() as s:
        assert assignments.delete(s, aid) == "unit-a"
    assert (generation(db, "unit-a"), generation(db, "unit-b")) == (g_a + 2, g_b)


def test_gp_release_leaves_a_pending_drop_and_a_new_assignment_of_it_clears_it(db):
    unit_with(db, "unit-a", 64)
    aid = give(db, "host-1", 10)
    with db.session() as s:
        target = assignments.get(s, aid).target_iqn
        assignments.delete(s, aid)
    with db.session() as s:
        assert [(d.target_iqn, d.unit_name) for d in s.query(PendingDropRow)] == [(target, "unit-a")]
        assert pool.desired_state(s, "unit-a").drop == [target]
    wiped(db, 1)
    give(db, "host-2", 10)                          # the same volume, wanted again
    with db.session() as s:
        assert s.query(PendingDropRow).count() == 0


def test_gp_list_all_is_in_order_and_filters_by_host(db):
    unit_with(db, "unit-a", 64, 64, 64)
    ids = [give(db, h, 10) for h in ("host-2", "host-1", "host-2")]
    with db.session() as s:
        assert [a.id for a in assignments.list_all(s)] == sorted(ids)
        assert [a.id for a in assignments.list_all(s, "host-2")] == [ids[0], ids[2]]
        assert [a.id for a in assignments.list_all(s, "host-1")] == [ids[1]]
        assert assignments.list_all(s, "host-9") == []


def test_ep_a_unit_not_online_offers_nothing_even_if_its_volumes_still_say_online(db):
    # defence in depth: a crash between marking the unit down and its volumes offline
    unit_with(db, "unit-a", 64)
    unit_with(db, "unit-b", 32)
    for state in ("offline", "unreachable", "link-down"):
        with db.session() as s:
            s.execute(update(UnitRow).where(UnitRow.name == "unit-a").values(state=state))
            assert [c.unit for c in assignments.free_candidates(s)] == ["unit-b"]
    with pytest.raises(InsufficientCapacity, match="largest free volume is 32.0 MiB"):
        give(db, "host-1", 40)


def test_ep_a_degraded_unit_offers_nothing(db):
    unit_with(db, "unit-a", 64)
    with db.session() as s:
        pool.record_heartbeat(s, "unit-a", "degraded", "configfs write stuck")
        assert assignments.free_candidates(s) == []


def test_ep_bad_names_are_refused_before_anything_is_recorded(db):
    unit_with(db, "unit-a", 64)
    with pytest.raises(InvalidInput, match="invalid name 'Host 1'"):
        assignments.allocate(db, "Host 1", "iqn.2026-11.org.dvsan.lab:h", "127.0.0.2", MiB)
    with pytest.raises(InvalidInput, match="invalid iSCSI name"):
        assignments.allocate(db, "host-1", "not-an-iqn", "127.0.0.2", MiB)
    with db.session() as s:
        assert assignments.list_all(s) == [] and len(assignments.free_candidates(s)) == 1
        with pytest.raises(NotFound, match="no assignment with id 7"):
            assignments.get(s, 7)
        with pytest.raises(NotFound):
            assignments.delete(s, 7)


def test_ep_a_pool_that_keeps_losing_the_race_is_refused_after_20_attempts(db, monkeypatch):
    unit_with(db, "unit-a", 64)
    give(db, "host-1", 10)
    with db.session() as s:
        taken = [c for c in pool.list_volumes(s)]
    from dvsan.model import Candidate

    calls: list[int] = []

    def always_the_taken_one(s, allowed=None):  # type: ignore[no-untyped-def]
        calls.append(1)        # as if every other request won the race for it
        return [Candidate(taken[0].id, "unit-a", taken[0].device, taken[0].size_bytes)]

    monkeypatch.setattr(assignments, "free_candidates", always_the_taken_one)
    with pytest.raises(Conflict, match="^the pool is too busy: could not allocate after 20 attempts, "
                                       "try again$"):
        give(db, "host-2", 10)
    assert len(calls) == 20
    with db.session() as s:
        assert [a.host_name for a in assignments.list_all(s)] == ["host-1"]
