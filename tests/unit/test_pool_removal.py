"""station.services.pool's unit removal on a real migrated SQLite database: what is refused (online,
holding an assignment, owing a wipe) and changes nothing, what a removal forgets, and that a removed
unit's later messages (heartbeat, goodbye, trap, storage info) change nothing until it announces
itself again (mutation survivors of docs/testing.md, 2026-12-07)."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from dvsan.errors import Conflict, NotFound
from station.db.tables import UnitRow, VolumeRow, WipeState
from station.services import pool
from tests.unit.test_pool_guard import MiB, db, give, parts, start, vols

__all__ = ["db"]       # the fixture, imported


def unit_row(db, name: str) -> tuple[str, str, str | None, int, datetime]:
    """The unit's row as stored, whatever its state (get_unit hides a removed one)."""
    with db.session() as s:
        u = s.get(UnitRow, name)
        assert u is not None
        seen = u.last_seen if u.last_seen.tzinfo else u.last_seen.replace(tzinfo=UTC)
        return u.state, u.health, u.health_detail, u.generation, seen


def removed(db, name: str = "unit-a", mib: tuple[int, ...] = (64, 32)) -> None:
    """`name` with volumes of `mib`, degraded, stopped and removed."""
    start(db, name, parts(name, *mib))
    with db.session() as s:
        pool.record_heartbeat(s, name, "degraded", "disk slow")
        pool.record_shutdown(s, name)
    with db.session() as s:
        assert pool.remove_unit(s, name) == pool.Removal(name, len(mib))


def test_gp_a_stopped_unit_is_removed_with_its_volumes_and_hidden(db, caplog):
    start(db, "unit-b", parts("unit-b", 16))
    start(db, "unit-a", parts("unit-a", 64, 32, 8))
    with db.session() as s:
        pool.record_heartbeat(s, "unit-a", "degraded", "disk slow")
        pool.bump_generation(s, "unit-a")
        pool.record_shutdown(s, "unit-a", "unreachable")
    gen = unit_row(db, "unit-a")[3]
    caplog.set_level("WARNING", logger="station.services.pool")
    caplog.clear()
    with db.session() as s:
        assert pool.remove_unit(s, "unit-a") == pool.Removal("unit-a", 3)
    assert [r.getMessage() for r in caplog.records] == [
        "unit unit-a removed from the pool with its 3 free volume(s)"]
    # the row is kept (its generation too: its agent pinned it), in state removed, healthy again
    assert unit_row(db, "unit-a")[:4] == ("removed", "ok", None, gen)
    assert vols(db) == {"vdq1": ("online", 16 * MiB)}          # only unit-b's volume is left
    with db.session() as s:
        assert s.scalars(select(VolumeRow.unit_name)).all() == ["unit-b"]
        assert [u.name for u in pool.list_units(s)] == ["unit-b"]
        with pytest.raises(NotFound, match="no unit named 'unit-a'"):
            pool.get_unit(s, "unit-a")
        with pytest.raises(NotFound, match="no unit named 'unit-a'"):
            pool.remove_unit(s, "unit-a")                      # a second removal: gone
        with pytest.raises(NotFound, match="no unit named 'unit-a'"):
            pool.desired_state(s, "unit-a")
        with pytest.raises(NotFound, match="no unit named 'unit-x'"):
            pool.remove_unit(s, "unit-x")


def test_gp_a_unit_without_volumes_is_removed(db):
    with db.session() as s:
        pool.record_startup(s, "unit-a", ("127.0.0.9", 7478), "127.0.0.1", 3261, None, "1.2")
        pool.record_shutdown(s, "unit-a", "link-down")
    with db.session() as s:
        assert pool.remove_unit(s, "unit-a") == pool.Removal("unit-a", 0)
    assert unit_row(db, "unit-a")[0] == "removed"


def test_ep_an_online_unit_is_not_removed(db):
    start(db, "unit-a", parts("unit-a", 64))
    with db.session() as s, pytest.raises(Conflict) as e:
        pool.remove_unit(s, "unit-a")
    assert str(e.value) == ("unit 'unit-a' is online: stop its agent (it says goodbye and goes offline) "
                            "before removing it, or it announces itself again at once")
    assert unit_row(db, "unit-a")[0] == "online"
    assert vols(db) == {"vdq1": ("online", 64 * MiB)}


@pytest.mark.parametrize("n", [1, 10, 11])
def test_ep_a_unit_holding_assignments_is_not_removed_and_says_which(db, n):
    start(db, "unit-a", parts("unit-a", *[64] * (n + 1)))
    ids = [give(db, f"host-{i}", 10) for i in range(n)]
    with db.session() as s:
        pool.record_shutdown(s, "unit-a")
    with db.session() as s:
        held = sorted((a.volume_id, a.host_name) for a in s.scalars(select(pool.AssignmentRow)))
        assert len(held) == len(ids)
        with pytest.raises(Conflict) as e:
            pool.remove_unit(s, "unit-a")
    listed = ", ".join(f"volume {v} to host {h}" for v, h in held[:10])
    assert str(e.value) == (f"unit 'unit-a' holds {n} assignment(s): release them first ({listed}"
                            + (", ..." if n > 10 else "") + ")")
    assert unit_row(db, "unit-a")[0] == "offline"
    assert len(vols(db)) == n + 1


@pytest.mark.parametrize("n", [1, 10, 11])
@pytest.mark.parametrize("wipe", [WipeState.NEEDED, WipeState.RUNNING, WipeState.FAILED])
def test_ep_a_unit_owing_a_wipe_is_not_removed_and_says_which(db, n, wipe):
    start(db, "unit-a", parts("unit-a", *[64] * (n + 1)))
    with db.session() as s:
        ids = sorted(s.scalars(select(VolumeRow.id)))
        owed = ids[1:]
        s.execute(update(VolumeRow).where(VolumeRow.id.in_(owed)).values(wipe_state=wipe))
        pool.record_shutdown(s, "unit-a")
    with db.session() as s, pytest.raises(Conflict) as e:
        pool.remove_unit(s, "unit-a")
    assert str(e.value) == (f"unit 'unit-a' owes the wipe of {n} released volume(s) ("
                            + ", ".join(str(i) for i in owed[:10]) + (", ..." if n > 10 else "")
                            + "): bring it back online so it zeroes them, then remove it")
    assert unit_row(db, "unit-a")[0] == "offline"
    assert len(vols(db)) == n + 1


def test_ep_a_removed_units_messages_change_nothing(db):
    removed(db)
    old = datetime.now(UTC) - timedelta(hours=1)
    with db.session() as s:
        s.execute(update(UnitRow).values(last_seen=old))
    before = unit_row(db, "unit-a")
    with db.session() as s:
        assert pool.record_heartbeat(s, "unit-a", "degraded", "x") == "unknown"
        for state in pool.UNIT_DOWN_STATES:
            assert pool.record_shutdown(s, "unit-a", state) == 0
        with pytest.raises(NotFound, match="unit 'unit-a' sent storage info before announcing itself"):
            pool.record_storage_info(s, "unit-a", parts("unit-a", 64))
        with pytest.raises(NotFound, match="unit 'unit-a' sent storage info before announcing itself"):
            pool.record_storage_info(s, "unit-a", parts("unit-a", 64), bring_online=False)
    assert unit_row(db, "unit-a") == before
    assert vols(db) == {}
    with db.session() as s:
        assert pool.silent_units(s, datetime.now(UTC)) == []
        with pytest.raises(ValueError, match="not a down state"):
            pool.record_shutdown(s, "unit-a", "online")       # checked before the unit is looked up


def test_gp_a_removed_unit_rejoins_with_new_volumes_and_its_generation(db):
    removed(db)
    with db.session() as s:
        pool.bump_generation(s, "unit-a")
    gen = unit_row(db, "unit-a")[3]
    ch = start(db, "unit-a", parts("unit-a", 64))
    assert ch == pool.PoolChange(added=1, updated=0, missing=0, online=1, changed=0)
    state, health, detail, g, _ = unit_row(db, "unit-a")
    assert (state, health, detail, g) == ("online", "ok", None, gen)
    with db.session() as s:
        assert [u.name for u in pool.list_units(s)] == ["unit-a"]
        assert pool.record_heartbeat(s, "unit-a") == "online"
        assert pool.desired_state(s, "unit-a").generation == gen
