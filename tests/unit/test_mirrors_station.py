"""station.services.mirrors on a real migrated SQLite database: a mirror's pair on two units, a
fenced assignment withheld and dropped, health reports, the member a replacement takes, a move."""

import os

import pytest

from dvsan.errors import Conflict, InsufficientPair, InvalidInput, NotFound
from station.db.tables import AssignmentRow, MirrorRow
from station.services import assignments, auth, mirrors, pool
from station.services.chap import ChapVault
from tests.unit.test_pool_guard import MiB, db, parts, start

__all__ = ["db"]       # the fixture, imported

IQN_B = "iqn.2026-11.org.dvsan.lab:host-b"


def pair(db, size_mib: int = 10, vault: ChapVault | None = None) -> int:
    return mirrors.allocate_pair(db, "host-b", IQN_B, "127.0.0.2", size_mib * MiB, vault)


def members(db, mid: int) -> list[tuple[int, str, str]]:
    with db.session() as s:
        return [(a.id, a.volume.unit_name, a.volume.device) for a in mirrors.get(s, mid).members]


def test_gp_a_pair_is_on_two_units_and_best_fit(db):
    start(db, "unit-a", parts("unit-a", 16, 64, 12))
    start(db, "unit-b", parts("unit-b", 32, 11))
    mid = pair(db)
    got = members(db, mid)
    assert sorted((u, d) for _, u, d in got) == [("unit-a", "vdq3"), ("unit-b", "vdq2")]
    with db.session() as s:
        m = s.get_one(MirrorRow, mid)
        assert (m.host_name, m.requested_bytes, m.state) == ("host-b", 10 * MiB, "unknown")
        assert {a.mirror_id for a in m.members} == {mid}


def test_ep_no_pair_changes_nothing(db):
    start(db, "unit-a", parts("unit-a", 16, 64))
    with pytest.raises(InsufficientPair, match="unit-a: largest 64.0 MiB"):
        pair(db)
    with db.session() as s:
        assert s.query(MirrorRow).count() == 0 and s.query(AssignmentRow).count() == 0


def test_gp_undo_returns_both_volumes_unwiped(db):
    start(db, "unit-a", parts("unit-a", 16))
    start(db, "unit-b", parts("unit-b", 16))
    mid = pair(db)
    with db.session() as s:
        assert sorted(mirrors.undo(s, mid)) == ["unit-a", "unit-b"]
    with db.session() as s:
        assert s.query(MirrorRow).count() == 0
        assert len(assignments.free_candidates(s)) == 2


def test_gp_a_fenced_assignment_is_withheld_and_its_target_dropped(db):
    start(db, "unit-a", parts("unit-a", 16, 16))
    a1 = assignments.allocate(db, "host-b", IQN_B, "127.0.0.2", 10 * MiB)
    a2 = assignments.allocate(db, "host-c", "iqn.2026-11.org.dvsan.lab:host-c", "127.0.0.3", 10 * MiB)
    with db.session() as s:
        gen = pool.get_unit(s, "unit-a").generation
        ids, units = mirrors.fence(s, "host-b")
        assert (ids, units) == ([a1], ["unit-a"])
    with db.session() as s:
        st = pool.desired_state(s, "unit-a")
        t1, t2 = assignments.get(s, a1).target_iqn, assignments.get(s, a2).target_iqn
        assert [e.target_iqn for e in st.exports] == [t2]
        assert st.drop == [t1] and "fenced" in st.withheld[a1]
        assert st.generation > gen


def test_gp_health_is_recorded_and_unknown_members_refused(db):
    start(db, "unit-a", parts("unit-a", 16))
    start(db, "unit-b", parts("unit-b", 16))
    mid = pair(db)
    (m1, *_), (m2, *_) = members(db, mid)
    with db.session() as s:
        assert mirrors.record_health(s, mid, "degraded", 50.0, "one gone", {m1: "active", m2: "faulty"})
    with db.session() as s:
        assert not mirrors.record_health(s, mid, "degraded", 50.0, "one gone", {m1: "active"})
        with pytest.raises(InvalidInput, match="not members of mirror"):
            mirrors.record_health(s, mid, "clean", None, None, {m1: "active", 999: "active"})
    with db.session() as s:
        m = s.get_one(MirrorRow, mid)
        assert (m.state, m.sync_percent, m.detail) == ("degraded", 50.0, "one gone")
        assert [a.member_state for a in m.members] == ["active", "faulty"]
        assert mirrors.failed_member(s, mid).id == m2            # reported faulty
        assert not mirrors.needs_auto_replace(s, mid)            # ... but its unit is online
    with db.session() as s:
        pool.record_shutdown(s, "unit-a")
    with db.session() as s:
        assert mirrors.failed_member(s, mid).id == m1            # a down unit comes first
        assert mirrors.needs_auto_replace(s, mid) is False       # unit-a's member is active
        pool.record_shutdown(s, "unit-b")
    with db.session() as s:
        assert mirrors.needs_auto_replace(s, mid) is True


def test_ep_no_failed_member_and_a_stranger_are_refused(db):
    start(db, "unit-a", parts("unit-a", 16))
    start(db, "unit-b", parts("unit-b", 16))
    mid = pair(db)
    with db.session() as s:
        with pytest.raises(Conflict, match="no failed member"):
            mirrors.failed_member(s, mid)
        with pytest.raises(InvalidInput, match="not a member"):
            mirrors.failed_member(s, mid, 999)
        with pytest.raises(NotFound):
            mirrors.failed_member(s, 999)


def test_gp_a_replacement_goes_on_a_unit_holding_no_member(db):
    start(db, "unit-a", parts("unit-a", 16, 16))
    start(db, "unit-b", parts("unit-b", 16, 16))
    mid = pair(db)
    (m1, *_), _ = members(db, mid)
    with pytest.raises(Conflict, match="holding no member"):     # only unit-a and unit-b: both hold one
        mirrors.plan_replacement(db, mid, m1, None)
    start(db, "unit-c", parts("unit-c", 64, 16))
    plan = mirrors.plan_replacement(db, mid, m1, None)
    assert (plan.old, plan.new.unit, plan.new.device, plan.made) == (m1, "unit-c", "vdq2", True)
    # a second run (the first was interrupted before releasing m1) finds it and adds no third
    again = mirrors.plan_replacement(db, mid, m1, None)
    assert (again.old, again.new, again.made) == (m1, plan.new, False)
    assert len(members(db, mid)) == 3


def test_gp_a_move_gives_the_spare_host_everything_fenced_with_fresh_chap(db):
    vault = ChapVault.of(os.urandom(32), os.urandom(32))
    start(db, "unit-a", parts("unit-a", 16, 16, 16))
    start(db, "unit-b", parts("unit-b", 16, 16))
    with db.session() as s:
        auth.enrol_host(s, "host-c", ["iqn.2026-11.org.dvsan.lab:host-c"])
    mid = pair(db, vault=vault)
    plain = assignments.allocate(db, "host-b", IQN_B, "127.0.0.2", 10 * MiB, vault=vault)
    mine = assignments.allocate(db, "host-c", "iqn.2026-11.org.dvsan.lab:host-c", "127.0.0.3", 10 * MiB)
    with db.session() as s:
        before = {a.id: a.chap_user for a in s.query(AssignmentRow)}
        with pytest.raises(Conflict, match="own storage"):
            mirrors.check_takeover(s, "host-b", "host-b")
        with pytest.raises(NotFound):
            mirrors.check_takeover(s, "host-b", "host-x")
        # nothing fenced yet: nothing moves (never an unfenced export to two hosts)
        assert mirrors.move(s, "host-b", "host-c", vault)[0] == []
        mirrors.fence(s, "host-b")
    with db.session() as s:
        moved, ms, units = mirrors.move(s, "host-b", "host-c", vault)
        assert sorted(moved) == sorted([plain, *(i for i, *_ in members(db, mid))]) and ms == [mid]
        assert units == ["unit-a", "unit-b"]
    with db.session() as s:
        for a in s.query(AssignmentRow):
            assert (a.host_name, a.initiator_iqn, a.host_address, a.fenced) == (
                "host-c", "iqn.2026-11.org.dvsan.lab:host-c", "127.0.0.3", False)
            assert a.id == mine or a.chap_user != before[a.id]
        assert s.get_one(MirrorRow, mid).host_name == "host-c"
