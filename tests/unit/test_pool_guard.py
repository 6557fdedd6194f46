"""station.services.pool on a real migrated SQLite database: what each report does to units and volumes, what
a unit is sent, and what is recorded of its answer (mutation survivors of docs/testing.md)."""

import dataclasses
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from dvsan.errors import NotFound
from dvsan.model import Partition
from station.db import Database
from station.db.tables import UnitRow, VolumeRow
from station.services import assignments, pool
from tests.unit.test_allocation_stateful import Vol, migrated_db, partition

MiB = 1024**2


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = migrated_db(tmp_path)
    yield d
    d.dispose()


def parts(unit: str, *mib: int) -> list[Partition]:
    return [dataclasses.replace(partition(Vol(unit, f"vdq{i}", m * MiB), i), uid=f"uid-{i}")
            for i, m in enumerate(mib, 1)]


def start(db: Database, unit: str, ps: list[Partition], portal: str = "127.0.0.1") -> pool.PoolChange:
    with db.session() as s:
        pool.record_startup(s, unit, ("127.0.0.9", 7478), portal, 3261, f"{unit}.example", "1.2")
        return pool.record_storage_info(s, unit, ps)


def give(db: Database, host: str, mib: int) -> int:
    return assignments.allocate(db, host, f"iqn.2026-11.org.dvsan.lab:{host}", "127.0.0.2", mib * MiB)


def vols(db: Database, unit: str | None = None, state: str | None = None) -> dict[str, tuple[str, int]]:
    with db.session() as s:
        return {v.device: (v.state, v.size_bytes) for v in pool.list_volumes(s, unit, state)}


def test_gp_startup_records_every_field_and_a_second_one_refreshes_them(db):
    with db.session() as s:
        u = pool.record_startup(s, "unit-a", ("127.0.0.9", 7478), "10.0.0.1", 3261, "a.example", "1.2")
        assert (u.control_host, u.control_port, u.portal_address, u.portal_port, u.dns_name,
                u.agent_version, u.state) == ("127.0.0.9", 7478, "10.0.0.1", 3261, "a.example", "1.2", "online")
    with db.session() as s:
        pool.record_shutdown(s, "unit-a")
        pool.record_startup(s, "unit-a", ("127.0.0.8", 7000), "10.0.0.2", 3262, None, "1.3")
    with db.session() as s:
        u = pool.get_unit(s, "unit-a")
        assert (u.control_host, u.control_port, u.portal_address, u.portal_port, u.dns_name,
                u.agent_version, u.state) == ("127.0.0.8", 7000, "10.0.0.2", 3262, None, "1.3", "online")
        assert [x.name for x in pool.list_units(s)] == ["unit-a"]


def test_ep_storage_info_from_a_unit_that_never_announced_is_refused(db):
    with db.session() as s, pytest.raises(NotFound, match="before announcing itself"):
        pool.record_storage_info(s, "unit-x", parts("unit-x", 64))
    assert vols(db) == {}


def test_gp_storage_info_adds_updates_and_marks_missing(db):
    ch = start(db, "unit-a", parts("unit-a", 64, 128))
    assert ch == pool.PoolChange(added=2, updated=0, missing=0, online=2, changed=0)
    ps = parts("unit-a", 96)                        # vdq1 grew (free: updated in place), vdq2 gone
    ch = start(db, "unit-a", ps)
    assert ch == pool.PoolChange(added=0, updated=1, missing=1, online=1, changed=0)
    assert vols(db) == {"vdq1": ("online", 96 * MiB), "vdq2": ("missing", 128 * MiB)}
    with db.session() as s:
        v = next(v for v in pool.list_volumes(s) if v.device == "vdq1")
        p = ps[0]
        assert (v.disk, v.number, v.start_lba, v.length_blocks, v.end_lba, v.block_size, v.uid) == \
            (p.disk, p.number, p.start_lba, p.length_blocks, p.end_lba, p.block_size, p.uid)
        gone = next(v for v in pool.list_volumes(s) if v.device == "vdq2")
        assert gone.detail == "no longer reported by its unit"
    ch = start(db, "unit-a", parts("unit-a", 96, 128))   # it comes back
    assert ch == pool.PoolChange(added=0, updated=2, missing=0, online=2, changed=0)
    assert vols(db) == {"vdq1": ("online", 96 * MiB), "vdq2": ("online", 128 * MiB)}


def test_gp_a_report_without_a_uid_keeps_the_known_one(db):
    start(db, "unit-a", parts("unit-a", 64))
    start(db, "unit-a", [dataclasses.replace(parts("unit-a", 64)[0], uid="")])
    with db.session() as s:
        assert pool.list_volumes(s)[0].uid == "uid-1"


def test_ep_an_assigned_volume_reported_with_another_extent_is_changed_never_moved(db):
    start(db, "unit-a", parts("unit-a", 64))
    aid = give(db, "host-1", 10)
    p = parts("unit-a", 64)[0]
    moved = dataclasses.replace(p, start_lba=p.start_lba + 8, end_lba=p.end_lba + 8)
    ch = start(db, "unit-a", [moved])
    assert ch == pool.PoolChange(added=0, updated=1, missing=0, online=0, changed=1)
    with db.session() as s:
        v = assignments.get(s, aid).volume
        assert (v.state, v.start_lba) == ("changed", p.start_lba)    # kept what the host was given
        assert v.detail and "start" in v.detail.lower()
        st = pool.desired_state(s, "unit-a")
        a = assignments.get(s, aid)
        assert st.exports == [] and st.drop == [a.target_iqn]        # dropped even under a session
        assert st.withheld == {aid: f"volume is changed: {v.detail}"}
    ch = start(db, "unit-a", [p])                   # the original extent again
    assert ch.changed == 0 and vols(db) == {"vdq1": ("online", 64 * MiB)}


def test_gp_shutdown_takes_only_online_volumes_offline_and_keeps_last_seen_for_offline(db):
    start(db, "unit-a", parts("unit-a", 64, 64, 64))
    start(db, "unit-a", parts("unit-a", 64, 64))        # vdq3 missing
    for state in pool.UNIT_DOWN_STATES:
        start(db, "unit-a", parts("unit-a", 64, 64))
        with db.session() as s:
            seen = pool.get_unit(s, "unit-a").last_seen
            assert pool.record_shutdown(s, "unit-a", state) == 2
        with db.session() as s:
            u = pool.get_unit(s, "unit-a")
            assert u.state == state
            assert (u.last_seen != seen) == (state == "offline")
        assert vols(db) == {"vdq1": ("offline", 64 * MiB), "vdq2": ("offline", 64 * MiB),
                            "vdq3": ("missing", 64 * MiB)}
    with db.session() as s:
        assert pool.record_shutdown(s, "unit-a") == 0


def test_ep_shutdown_of_an_unknown_unit_or_to_a_state_that_is_not_down(db):
    start(db, "unit-a", parts("unit-a", 64))
    with db.session() as s:
        with pytest.raises(NotFound, match="unknown unit 'unit-x'"):
            pool.record_shutdown(s, "unit-x")
        with pytest.raises(ValueError, match="not a down state: online"):
            pool.record_shutdown(s, "unit-a", "online")
    assert vols(db) == {"vdq1": ("online", 64 * MiB)}


def test_gp_heartbeat_refreshes_an_online_unit_and_records_its_health(db):
    start(db, "unit-a", parts("unit-a", 64))
    old = datetime.now(UTC) - timedelta(hours=1)
    with db.session() as s:
        s.execute(update(UnitRow).values(last_seen=old))
    with db.session() as s:
        assert pool.silent_units(s, datetime.now(UTC) - timedelta(minutes=1)) == ["unit-a"]
        assert pool.record_heartbeat(s, "unit-a") == "online"
    with db.session() as s:
        assert pool.silent_units(s, datetime.now(UTC) - timedelta(minutes=1)) == []
        assert pool.record_heartbeat(s, "unit-a", "degraded", "stuck") == "online"
    with db.session() as s:
        u = pool.get_unit(s, "unit-a")
        assert (u.health, u.health_detail) == ("degraded", "stuck")
        pool.record_heartbeat(s, "unit-a")
    with db.session() as s:
        u = pool.get_unit(s, "unit-a")
        assert (u.health, u.health_detail) == ("ok", None)


def test_ep_heartbeat_of_a_down_or_unknown_unit_refreshes_nothing(db):
    start(db, "unit-a", parts("unit-a", 64))
    old = datetime.now(UTC) - timedelta(hours=1)
    with db.session() as s:
        pool.record_shutdown(s, "unit-a", "unreachable")
        s.execute(update(UnitRow).values(last_seen=old))
    with db.session() as s:
        assert pool.record_heartbeat(s, "unit-a", "degraded", "x") == "unreachable"
        assert pool.record_heartbeat(s, "unit-x") == "unknown"
    with db.session() as s:
        u = pool.get_unit(s, "unit-a")
        seen = u.last_seen if u.last_seen.tzinfo else u.last_seen.replace(tzinfo=UTC)
        assert (seen, u.health) == (old, "ok")
        assert pool.silent_units(s, datetime.now(UTC)) == []      # only online units fall silent


def test_gp_silent_units_compares_with_the_cutoff(db):
    start(db, "unit-a", parts("unit-a", 64))
    start(db, "unit-b", parts("unit-b", 64))
    t = datetime.now(UTC) - timedelta(minutes=5)
    with db.session() as s:
        s.execute(update(UnitRow).where(UnitRow.name == "unit-a").values(last_seen=t - timedelta(seconds=1)))
        s.execute(update(UnitRow).where(UnitRow.name == "unit-b").values(last_seen=t + timedelta(seconds=1)))
    with db.session() as s:
        assert pool.silent_units(s, t) == ["unit-a"]


def test_gp_lists_and_lookups(db):
    start(db, "unit-b", parts("unit-b", 64))
    start(db, "unit-a", parts("unit-a", 64, 32))
    with db.session() as s:
        assert [u.name for u in pool.list_units(s)] == ["unit-a", "unit-b"]
        assert [(v.unit_name, v.device) for v in pool.list_volumes(s)] == \
            [("unit-a", "vdq1"), ("unit-a", "vdq2"), ("unit-b", "vdq1")]
        with pytest.raises(NotFound, match="no unit named 'unit-x'"):
            pool.get_unit(s, "unit-x")
        pool.record_shutdown(s, "unit-b")
    assert vols(db, "unit-b") == {"vdq1": ("offline", 64 * MiB)}
    assert vols(db, state="online") == {"vdq1": ("online", 64 * MiB), "vdq2": ("online", 32 * MiB)}
    assert vols(db, "unit-b", "online") == {}


def test_gp_pool_id_is_made_once_and_kept(db):
    with db.session() as s:
        first = pool.pool_id(s)
    with db.session() as s:
        assert pool.pool_id(s) == first and len(first) == 36


def test_gp_desired_state_carries_exactly_the_units_online_assignments(db):
    start(db, "unit-a", parts("unit-a", 64, 64))
    start(db, "unit-b", parts("unit-b", 64))
    a1, a2 = give(db, "host-1", 10), give(db, "host-2", 10)
    b1 = give(db, "host-3", 10)
    with db.session() as s:
        st = pool.desired_state(s, "unit-a")
        rows = {a: assignments.get(s, a) for a in (a1, a2, b1)}
        assert rows[b1].volume.unit_name == "unit-b"
        assert st.pool_id == pool.pool_id(s) and st.generation == pool.get_unit(s, "unit-a").generation
        assert [(e.target_iqn, e.device, e.initiators, e.lun, e.wwn) for e in st.exports] == [
            (rows[a].target_iqn, rows[a].volume.device, (rows[a].initiator_iqn,), 0, rows[a].wwn)
            for a in (a1, a2)]
        assert [e.extent for e in st.exports] == [pool.volume_extent(rows[a].volume) for a in (a1, a2)]
        assert (st.drop, st.withheld) == ([], {})
        assert pool.desired_exports(s, "unit-a") == st.exports
        # a volume that went missing is withheld, not sent, and not dropped
        pool.record_storage_info(s, "unit-a", [parts("unit-a", 64, 64)[1]])
    with db.session() as s:
        st = pool.desired_state(s, "unit-a")
        gone = rows[a1] if rows[a1].volume.device == "vdq1" else rows[a2]
        assert gone.id in st.withheld and st.withheld[gone.id].startswith("volume is missing")
        assert [e.target_iqn for e in st.exports] == [r.target_iqn for r in rows.values()
                                                      if r.volume.unit_name == "unit-a" and r.id != gone.id]
        assert st.drop == []
        with pytest.raises(NotFound):
            pool.desired_state(s, "unit-x")


def test_gp_pending_drops_are_kept_once_and_cleared_by_target(db):
    start(db, "unit-a", parts("unit-a", 64))
    with db.session() as s:
        pool.add_pending_drop(s, "unit-a", "iqn.2026-11.org.dvsan:unit-a:vdq9")
        s.flush()
        pool.add_pending_drop(s, "unit-a", "iqn.2026-11.org.dvsan:unit-a:vdq9")
        pool.add_pending_drop(s, "unit-a", "iqn.2026-11.org.dvsan:unit-a:vdq8")
    with db.session() as s:
        assert pool.desired_state(s, "unit-a").drop == ["iqn.2026-11.org.dvsan:unit-a:vdq8",
                                                        "iqn.2026-11.org.dvsan:unit-a:vdq9"]
        pool.clear_pending_drops(s, [])
        pool.clear_pending_drops(s, ["iqn.2026-11.org.dvsan:unit-a:vdq9"])
    with db.session() as s:
        assert pool.desired_state(s, "unit-a").drop == ["iqn.2026-11.org.dvsan:unit-a:vdq8"]


def test_gp_export_results_are_recorded_per_assignment(db):
    start(db, "unit-a", parts("unit-a", 64, 64, 64))
    start(db, "unit-b", parts("unit-b", 64))
    ids = [give(db, f"host-{i}", 10) for i in range(3)]
    other = give(db, "host-9", 10)
    with db.session() as s:
        t = {a: assignments.get(s, a).target_iqn for a in ids}
        pool.add_pending_drop(s, "unit-a", "iqn.2026-11.org.dvsan:unit-a:old1")
        pool.add_pending_drop(s, "unit-a", "iqn.2026-11.org.dvsan:unit-a:old2")
        st = pool.desired_state(s, "unit-a")
        st = dataclasses.replace(st, withheld={ids[2]: "volume is offline" + "x" * 300})
        refused = {t[ids[1]]: "device is mounted" + "y" * 300, "iqn.2026-11.org.dvsan:unit-a:old2": "busy"}
        pool.record_export_results(s, "unit-a", st, refused)
    with db.session() as s:
        got = {a: (assignments.get(s, a).export_state, assignments.get(s, a).export_detail) for a in ids}
        assert got[ids[0]] == ("exported", None)
        assert got[ids[1]] == ("refused", ("device is mounted" + "y" * 300)[:255])
        assert got[ids[2]] == ("withheld", ("volume is offline" + "x" * 300)[:255])
        assert assignments.get(s, other).export_state == "pending"          # another unit's: untouched
        # the drop the unit carried out is forgotten; the one it refused is kept
        assert pool.desired_state(s, "unit-a").drop == ["iqn.2026-11.org.dvsan:unit-a:old2"]


def test_gp_bump_generation_changes_only_that_unit(db):
    start(db, "unit-a", parts("unit-a", 64))
    start(db, "unit-b", parts("unit-b", 64))
    with db.session() as s:
        g = {u.name: u.generation for u in pool.list_units(s)}
        pool.bump_generation(s, "unit-a")
        pool.bump_generation(s, "unit-a")
    with db.session() as s:
        assert {u.name: u.generation for u in pool.list_units(s)} == {"unit-a": g["unit-a"] + 2,
                                                                       "unit-b": g["unit-b"]}


def test_gp_volume_rows_carry_their_unit(db):
    start(db, "unit-a", parts("unit-a", 64))
    with db.session() as s:
        assert [v.unit_name for v in s.query(VolumeRow)] == ["unit-a"]


def test_gp_a_health_change_is_logged_once_with_its_detail(db, caplog):
    start(db, "unit-a", parts("unit-a", 64))
    caplog.set_level("WARNING", logger="station.services.pool")
    with db.session() as s:
        pool.record_heartbeat(s, "unit-a", "degraded", "configfs write stuck")
        pool.record_heartbeat(s, "unit-a", "degraded", "configfs write stuck")
        pool.record_heartbeat(s, "unit-a", "ok")
    assert [r.getMessage() for r in caplog.records] == [
        "unit unit-a health: degraded (configfs write stuck)", "unit unit-a health: ok"]


def test_gp_a_volumes_extent_carries_its_identity(db):
    start(db, "unit-a", parts("unit-a", 64))
    p = parts("unit-a", 64)[0]
    with db.session() as s:
        e = pool.volume_extent(pool.list_volumes(s)[0])
    assert (e.start_lba, e.length_blocks, e.block_size, e.uid) == (p.start_lba, p.length_blocks, 512, "uid-1")


def test_gp_an_offline_volume_is_withheld_saying_only_that(db):
    start(db, "unit-a", parts("unit-a", 64))
    aid = give(db, "host-1", 10)
    with db.session() as s:
        pool.record_shutdown(s, "unit-a")
    with db.session() as s:
        st = pool.desired_state(s, "unit-a")
        assert (st.exports, st.drop, st.withheld) == ([], [], {aid: "volume is offline"})
