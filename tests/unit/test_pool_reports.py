"""A storage report that a down event overtook (SNMP linkDown, SHUTDOWN) does not bring its unit
back online: station.services.pool.record_storage_info(bring_online=False) on a real SQLite database."""

from station.services import pool
from tests.unit.test_pool_guard import db, parts, start, vols  # noqa: F401 - db is a fixture


def test_ep_a_late_report_leaves_a_down_unit_down_and_its_volumes_offline(db):  # noqa: F811
    start(db, "unit-a", parts("unit-a", 10, 20))
    with db.session() as s:
        pool.record_shutdown(s, "unit-a", "link-down")
    with db.session() as s:
        change = pool.record_storage_info(s, "unit-a", parts("unit-a", 10, 20, 30), bring_online=False)
        assert change.added == 1
    with db.session() as s:
        assert pool.get_unit(s, "unit-a").state == "link-down"
    assert {st for st, _ in vols(db, "unit-a").values()} == {"offline"}


def test_gp_a_late_report_for_an_online_unit_is_taken_as_usual(db):  # noqa: F811
    start(db, "unit-a", parts("unit-a", 10))
    with db.session() as s:
        pool.record_storage_info(s, "unit-a", parts("unit-a", 10, 20), bring_online=False)
    assert {st for st, _ in vols(db, "unit-a").values()} == {"online"}
