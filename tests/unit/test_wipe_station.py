"""station.services.wipes on a real migrated SQLite database: a released volume is never handed out
before its unit has zeroed it, whatever the unit reports, in whatever order, and after restarts."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dvsan.errors import InsufficientCapacity, InvalidInput
from station.db import Database
from station.db.tables import VolumeRow, WipeState
from station.services import assignments, pool, wipes
from tests.unit.test_allocation_stateful import migrated_db
from tests.unit.test_assignments_guard import give, unit_with

MiB = 1024**2
SIZE = 64 * MiB


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = migrated_db(tmp_path)
    yield d
    d.dispose()


def released(db: Database) -> int:
    """unit-a with one 64 MiB volume, given to host-1 and released: its volume id."""
    unit_with(db, "unit-a", 64)
    aid = give(db, "host-1", 10)
    with db.session() as s:
        vid = assignments.get(s, aid).volume_id
        assignments.delete(s, aid)
    return vid


def order(db: Database, vid: int) -> dict[str, Any]:
    with db.session() as s:
        o = wipes.prepare(s, vid)
        assert o is not None
        return o.body


def answer(db: Database, vid: int, wid: str, **ack: Any) -> str:
    with db.session() as s:
        return wipes.record_answer(s, vid, wid, ack)


def report(db: Database, wipe_id: str, state: str, done: int = SIZE, total: int = SIZE, **extra: Any) -> str:
    with db.session() as s:
        return wipes.record_status(s, "unit-a", {"device": "vdq1", "wipe_id": wipe_id, "state": state,
                                                 "done_bytes": done, "total_bytes": total,
                                                 "method": "direct", "elapsed_s": 2.5, **extra})


def vol(db: Database, vid: int) -> VolumeRow:
    with db.session() as s:
        v = s.get_one(VolumeRow, vid)
        s.expunge(v)
        return v


def refused_for_want_of_clean(db: Database) -> None:
    with pytest.raises(InsufficientCapacity):
        give(db, "host-2", 10)


def test_gp_release_marks_the_volume_needed_and_it_is_not_handed_out(db):
    vid = released(db)
    v = vol(db, vid)
    assert (v.wipe_state, v.wipe_total_bytes, v.wipe_done_bytes) == (WipeState.NEEDED, SIZE, 0)
    refused_for_want_of_clean(db)


def test_gp_order_accepted_progress_then_success_frees_the_volume(db):
    vid = released(db)
    body = order(db, vid)
    assert body["unit"] == "unit-a" and body["device"] == "vdq1"
    assert body["extent"]["length_blocks"] * body["extent"]["block_size"] == SIZE
    with db.session() as s:
        assert body["pool_id"] == pool.pool_id(s)
    wid = body["wipe_id"]
    assert answer(db, vid, wid, status="accepted", method="direct", done_bytes=0) == WipeState.RUNNING
    assert report(db, wid, "running", done=SIZE // 4) == WipeState.RUNNING
    assert vol(db, vid).wipe_done_bytes == SIZE // 4
    refused_for_want_of_clean(db)
    assert report(db, wid, "succeeded") == WipeState.CLEAN
    v = vol(db, vid)
    assert (v.wipe_state, v.wipe_done_bytes, v.wipe_method) == (WipeState.CLEAN, SIZE, "direct")
    assert "zeroed (direct) in 2.5 s" == v.wipe_detail
    give(db, "host-2", 10)


def test_ep_success_for_another_size_is_a_failure(db):
    vid = released(db)
    wid = order(db, vid)["wipe_id"]
    answer(db, vid, wid, status="accepted")
    assert report(db, wid, "succeeded", done=SIZE // 2, total=SIZE // 2) == WipeState.FAILED
    assert "the volume has" in (vol(db, vid).wipe_detail or "")
    refused_for_want_of_clean(db)


def test_ep_a_status_of_another_wipe_id_or_unit_or_device_is_stale_and_changes_nothing(db):
    vid = released(db)
    wid = order(db, vid)["wipe_id"]
    answer(db, vid, wid, status="accepted")
    assert report(db, "v1-forged", "succeeded") == "stale"
    with db.session() as s:
        assert wipes.record_status(s, "unit-b", {"device": "vdq1", "wipe_id": wid, "state": "succeeded",
                                                 "done_bytes": SIZE, "total_bytes": SIZE}) == "stale"
        assert wipes.record_status(s, "unit-a", {"device": "vdq9", "wipe_id": wid, "state": "succeeded",
                                                 "done_bytes": SIZE, "total_bytes": SIZE}) == "stale"
    assert vol(db, vid).wipe_state == WipeState.RUNNING
    refused_for_want_of_clean(db)


@pytest.mark.parametrize("bad", [
    {"device": "../sda"}, {"device": None}, {"wipe_id": ""}, {"wipe_id": 7}, {"state": "done"},
    {"done_bytes": -1}, {"done_bytes": "64"}, {"total_bytes": True},
])
def test_ep_a_malformed_status_is_refused_and_changes_nothing(db, bad):
    vid = released(db)
    wid = order(db, vid)["wipe_id"]
    answer(db, vid, wid, status="accepted")
    body = {"device": "vdq1", "wipe_id": wid, "state": "succeeded", "done_bytes": SIZE,
            "total_bytes": SIZE, **bad}
    with db.session() as s, pytest.raises(InvalidInput):
        wipes.record_status(s, "unit-a", body)
    assert vol(db, vid).wipe_state == WipeState.RUNNING


def test_ep_refused_and_failed_wipes_keep_the_volume_out_then_a_new_order_gets_a_new_id(db):
    vid = released(db)
    wid = order(db, vid)["wipe_id"]
    assert answer(db, vid, wid, status="refused", reason="an initiator is logged in") == WipeState.FAILED
    assert "an initiator is logged in" in (vol(db, vid).wipe_detail or "")
    refused_for_want_of_clean(db)
    wid2 = order(db, vid)["wipe_id"]
    assert wid2 != wid
    answer(db, vid, wid2, status="accepted")
    assert report(db, wid2, "failed", done=SIZE // 2, error="write error at byte 33554432") == WipeState.FAILED
    assert "write error at byte 33554432" in (vol(db, vid).wipe_detail or "")
    refused_for_want_of_clean(db)


def test_gp_a_cancelled_wipe_is_needed_again(db):
    vid = released(db)
    wid = order(db, vid)["wipe_id"]
    answer(db, vid, wid, status="accepted")
    assert report(db, wid, "cancelled", done=SIZE // 3) == WipeState.NEEDED
    refused_for_want_of_clean(db)


def test_gp_an_order_sent_again_keeps_its_id_and_a_unit_still_wiping_is_followed(db):
    # the station restarted after recording the id: the same id goes out again
    vid = released(db)
    wid = order(db, vid)["wipe_id"]
    assert order(db, vid)["wipe_id"] == wid
    # the unit answers `running` under an id of ours it holds: the station follows that wipe
    assert answer(db, vid, wid, status="running", wipe_id="v1-earlier", done_bytes=5) == WipeState.RUNNING
    assert vol(db, vid).wipe_id == "v1-earlier"
    assert report(db, "v1-earlier", "succeeded") == WipeState.CLEAN


def test_ep_a_malformed_or_error_ack_leaves_it_needed(db):
    vid = released(db)
    wid = order(db, vid)["wipe_id"]
    assert answer(db, vid, wid, status="error", error="field 'extent' is missing") == WipeState.NEEDED
    assert "field 'extent' is missing" in (vol(db, vid).wipe_detail or "")
    assert answer(db, vid, wid) == WipeState.NEEDED


def test_gp_no_order_while_the_unit_is_down_or_the_volume_is_clean_or_assigned(db):
    vid = released(db)
    with db.session() as s:
        pool.record_shutdown(s, "unit-a", "offline")
    with db.session() as s:
        assert wipes.prepare(s, vid) is None
        assert wipes.unwiped(s, "unit-a") == [vid]
    unit_with(db, "unit-a", 64)        # back
    wid = order(db, vid)["wipe_id"]
    answer(db, vid, wid, status="accepted")
    report(db, wid, "succeeded")
    with db.session() as s:
        assert wipes.prepare(s, vid) is None
        assert wipes.unwiped(s, "unit-a") == []
    give(db, "host-2", 10)
    with db.session() as s:
        assert wipes.prepare(s, vid) is None


def test_gp_the_undo_of_an_unconfirmed_assignment_needs_no_wipe(db):
    unit_with(db, "unit-a", 64)
    aid = give(db, "host-1", 10)
    with db.session() as s:
        assignments.delete(s, aid, wipe=False)
    give(db, "host-2", 10)


def test_gp_a_report_of_the_unit_keeps_the_wipe_state(db):
    # a unit restart re-reports its partitions: the report must not make a dirty volume clean
    vid = released(db)
    unit_with(db, "unit-a", 64)
    assert vol(db, vid).wipe_state == WipeState.NEEDED
    refused_for_want_of_clean(db)
