"""station.services.pool's announcements and storage reports on a real migrated SQLite database: what
brings a down unit back, what each report does to the volumes after an assigned one that moved, the
log line of a moved volume, identities that change (mutation survivors of docs/testing.md, 2026-12-07)."""

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, select, update

from dvsan.errors import InvalidInput
from station.db.tables import PoolRow, UnitRow, VolumeRow
from station.services import assignments, pool
from tests.unit.test_pool_guard import MiB, db, give, parts, start, vols

__all__ = ["db"]       # the fixture, imported

OLD = datetime.now(UTC) - timedelta(hours=1)


def aged(db) -> None:
    """Every unit and volume last seen / updated an hour ago."""
    with db.session() as s:
        s.execute(update(UnitRow).values(last_seen=OLD))
        s.execute(update(VolumeRow).values(updated_at=OLD))


def utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def test_ep_an_announcement_with_an_invalid_name_is_refused(db):
    with db.session() as s, pytest.raises(InvalidInput, match="invalid name 'Unit A'"):
        pool.record_startup(s, "Unit A", ("127.0.0.9", 7478), "127.0.0.1", 3261, None, "1.2")
    with db.session() as s:
        assert pool.list_units(s) == []


@pytest.mark.parametrize("how", [{}, {"bring_online": True}])
def test_gp_a_report_the_station_asked_for_brings_a_down_unit_back(db, how):
    start(db, "unit-a", parts("unit-a", 64))
    with db.session() as s:
        pool.record_shutdown(s, "unit-a", "unreachable")
    aged(db)
    with db.session() as s:
        assert pool.record_storage_info(s, "unit-a", parts("unit-a", 64, 32), **how) == \
            pool.PoolChange(added=1, updated=1, missing=0, online=2, changed=0)
    with db.session() as s:
        u = pool.get_unit(s, "unit-a")
        assert u.state == "online" and utc(u.last_seen) > OLD + timedelta(minutes=59)
        assert all(utc(v.updated_at) > OLD + timedelta(minutes=59) for v in pool.list_volumes(s))
    assert vols(db) == {"vdq1": ("online", 64 * MiB), "vdq2": ("online", 32 * MiB)}


def test_gp_a_late_report_for_an_online_unit_refreshes_it(db):
    start(db, "unit-a", parts("unit-a", 64))
    aged(db)
    with db.session() as s:
        pool.record_storage_info(s, "unit-a", parts("unit-a", 64), bring_online=False)
    with db.session() as s:
        u = pool.get_unit(s, "unit-a")
        assert u.state == "online" and utc(u.last_seen) > OLD + timedelta(minutes=59)


def test_gp_a_late_report_leaves_a_down_units_last_seen(db):
    start(db, "unit-a", parts("unit-a", 64))
    with db.session() as s:
        pool.record_shutdown(s, "unit-a", "link-down")
    aged(db)
    with db.session() as s:
        pool.record_storage_info(s, "unit-a", parts("unit-a", 64), bring_online=False)
    with db.session() as s:
        u = pool.get_unit(s, "unit-a")
        assert (u.state, utc(u.last_seen)) == ("link-down", OLD)
        v = pool.list_volumes(s)[0]
        assert (v.state, v.detail) == ("offline", None) and utc(v.updated_at) > OLD + timedelta(minutes=59)


def test_ep_volumes_reported_after_a_moved_assigned_one_are_still_taken(db, caplog):
    """The moved volume is skipped, not the rest of the report; the warning is logged once, word
    for word, while the volume stays changed."""
    start(db, "unit-a", parts("unit-a", 64, 64, 64))
    aid = give(db, "host-1", 10)
    with db.session() as s:
        a = assignments.get(s, aid)
        dev, host, given = a.volume.device, a.host_name, pool.volume_extent(a.volume)
    ps = parts("unit-a", 64, 64, 48)                    # the free vdq3 shrank: updated in place
    i = int(dev[-1]) - 1
    moved = dataclasses.replace(ps[i], start_lba=ps[i].start_lba + 8, end_lba=ps[i].end_lba + 8)
    ps = [moved] + [q for q in ps if q.device != dev]   # the moved one first
    ps.append(dataclasses.replace(parts("unit-a", 16)[0], device="vdq9", number=9, uid="uid-9"))
    caplog.set_level("WARNING", logger="station.services.pool")
    caplog.clear()
    assert _report(db, ps) == pool.PoolChange(added=1, updated=3, missing=0, online=3, changed=1)
    assert len(caplog.records) == 1                     # said when it happens
    assert _report(db, ps) == pool.PoolChange(added=0, updated=4, missing=0, online=3, changed=1)
    got = vols(db)
    assert got.pop(dev) == ("changed", 64 * MiB)
    want = {"vdq1": ("online", 64 * MiB), "vdq2": ("online", 64 * MiB), "vdq3": ("online", 48 * MiB),
            "vdq9": ("online", 16 * MiB)}
    want.pop(dev, None)
    assert got == want
    why = given.mismatch(moved.extent)
    assert why is not None
    assert [r.getMessage() for r in caplog.records] == [
        (f"unit unit-a reports {dev} with another extent under an assigned volume (host {host}): {why}; "
         "its export is withheld")]


def _report(db, ps) -> pool.PoolChange:
    with db.session() as s:
        return pool.record_storage_info(s, "unit-a", ps)


def test_gp_a_free_volume_takes_its_new_identity(db):
    start(db, "unit-a", parts("unit-a", 64))
    p = parts("unit-a", 64)[0]
    _report(db, [dataclasses.replace(p, uid="uid-new")])
    with db.session() as s:
        assert pool.list_volumes(s)[0].uid == "uid-new"


def test_gp_a_volume_no_longer_reported_is_missing_from_now(db):
    start(db, "unit-a", parts("unit-a", 64, 32))
    aged(db)
    _report(db, parts("unit-a", 64))
    with db.session() as s:
        gone = next(v for v in pool.list_volumes(s) if v.device == "vdq2")
        assert (gone.state, gone.detail) == ("missing", "no longer reported by its unit")
        assert utc(gone.updated_at) > OLD + timedelta(minutes=59)


def test_ep_two_assigned_volumes_moved_in_one_report_are_both_counted(db):
    start(db, "unit-a", parts("unit-a", 64, 64, 64))
    give(db, "host-1", 10)
    give(db, "host-2", 10)
    with db.session() as s:
        held = {a.volume.device for a in assignments.list_all(s)}
    ps = [dataclasses.replace(p, start_lba=p.start_lba + 8, end_lba=p.end_lba + 8) if p.device in held else p
          for p in parts("unit-a", 64, 64, 64)]
    assert _report(db, ps) == pool.PoolChange(added=0, updated=3, missing=0, online=1, changed=2)
    assert sorted(st for st, _ in vols(db).values()) == ["changed", "changed", "online"]


def test_gp_a_pool_without_its_identity_row_makes_one_and_keeps_it(db):
    """The migration makes the row; should it be gone, the fallback makes exactly one, kept."""
    with db.session() as s:
        first = pool.pool_id(s)
        s.execute(delete(PoolRow))
    with db.session() as s:
        made = pool.pool_id(s)
    with db.session() as s:
        assert pool.pool_id(s) == made != first
        assert str(uuid.UUID(made)) == made
        assert [(r.id, r.pool_id) for r in s.scalars(select(PoolRow))] == [(1, made)]


def test_gp_volumes_are_listed_by_unit_then_device_whatever_the_report_order(db):
    start(db, "unit-b", parts("unit-b", 16))
    start(db, "unit-a", parts("unit-a", 64, 32, 16)[::-1])
    with db.session() as s:
        assert [(v.unit_name, v.device) for v in pool.list_volumes(s)] == \
            [("unit-a", "vdq1"), ("unit-a", "vdq2"), ("unit-a", "vdq3"), ("unit-b", "vdq1")]
