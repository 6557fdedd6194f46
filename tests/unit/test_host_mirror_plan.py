"""host_agent.sync.plan_mirror: what sync does to a mirror's array, from plain data."""

from __future__ import annotations

from host_agent.mdadm import ArrayView, Member, OtherSignature, Superblock
from host_agent.sync import plan_mirror

U5 = "3d0b6b0c:1f8e2a7b:9c4d5e6f:01234567"
OURS = Superblock(U5, "any:dvsan-5", "raid1", 2)
OTHER = Superblock("11111111:22222222:33333333:44444444", "host-c:dvsan-9", "raid1", 2)


def array(*members: tuple[str, str], degraded: int = 0, action: str = "idle", state: str = "clean") -> ArrayView:
    return ArrayView("md127", state, 2, degraded, action, None,
                     tuple(Member(d, frozenset(f.split(",")), i) for i, (d, f) in enumerate(members)))


def test_gp_two_blank_members_make_a_new_array() -> None:
    p = plan_mirror(5, {"11": "sdb", "12": "sdc"}, {}, {"sdb": None, "sdc": None}, None, None)
    assert p.create == ["sdb", "sdc"] and not p.assemble and not p.problems


def test_gp_members_with_this_mirrors_superblock_are_assembled_never_created() -> None:
    p = plan_mirror(5, {"11": "sdb", "12": "sdc"}, {}, {"sdb": OURS, "sdc": OURS}, None, U5)
    assert p.assemble == ["sdb", "sdc"] and p.create == []


def test_gp_one_member_missing_assembles_degraded() -> None:
    p = plan_mirror(5, {"11": "sdb", "12": None}, {}, {"sdb": OURS}, None, None)
    assert p.assemble == ["sdb"] and p.create == [] and not p.problems


def test_gp_a_spare_host_matches_by_name_whatever_the_home_host() -> None:
    """After a takeover the spare host has no recorded uuid: the name suffix decides."""
    sb = Superblock(U5, "host-b:dvsan-5", "raid1", 2)
    p = plan_mirror(5, {"11": "sdb", "12": "sdc"}, {}, {"sdb": sb, "sdc": sb}, None, None)
    assert p.assemble == ["sdb", "sdc"]


def test_gp_a_replacement_member_is_added_to_the_running_array() -> None:
    p = plan_mirror(5, {"11": "sdb", "13": "sdd"}, {}, {"sdd": None}, array(("sdb", "in_sync"), degraded=1), U5)
    assert p.add == ["sdd"] and not p.create and not p.assemble and not p.fail_remove


def test_gp_a_replacement_is_added_after_assembling_the_survivor() -> None:
    p = plan_mirror(5, {"11": "sdb", "13": "sdd"}, {}, {"sdb": OURS, "sdd": None}, None, U5)
    assert p.assemble == ["sdb"] and p.add == ["sdd"]


def test_gp_a_dropped_member_is_failed_and_removed_before_its_logout() -> None:
    p = plan_mirror(5, {"11": "sdb", "13": "sdd"}, {"12": "sdc"}, {},
                    array(("sdb", "in_sync"), ("sdc", "faulty"), ("sdd", "in_sync")), U5)
    assert p.fail_remove == ["sdc"] and p.detachable == ["12"] and not p.problems


def test_gp_a_dropped_member_whose_device_is_gone_is_only_logged_out() -> None:
    p = plan_mirror(5, {"11": "sdb"}, {"12": None}, {}, array(("sdb", "in_sync"), degraded=1), U5)
    assert p.fail_remove == [] and p.detachable == ["12"]


def test_ep_the_last_active_member_is_never_removed() -> None:
    p = plan_mirror(5, {"13": "sdd"}, {"11": "sdb"}, {},
                    array(("sdb", "in_sync"), ("sdd", "spare"), degraded=1, action="recover"), U5)
    assert p.fail_remove == [] and p.detachable == []
    assert "last active member" in p.problems[0] and "member 11 (sdb)" in p.problems[0]


def test_ep_two_dropped_members_never_empty_the_array() -> None:
    p = plan_mirror(5, {"13": "sdd"}, {"11": "sdb", "12": "sdc"}, {"sdd": None},
                    array(("sdb", "in_sync"), ("sdc", "in_sync")), U5)
    assert p.fail_remove == ["sdb"] and p.detachable == ["11"]
    assert "member 12 (sdc)" in p.problems[0] and p.add == ["sdd"]


def test_gp_a_mirror_the_station_no_longer_has_is_stopped_then_logged_out() -> None:
    p = plan_mirror(5, {}, {"11": "sdb", "12": "sdc"}, {}, array(("sdb", "in_sync"), ("sdc", "in_sync")), U5)
    assert p.stop and p.fail_remove == [] and p.detachable == ["11", "12"] and not p.problems


def test_ep_both_members_missing_is_reported_and_nothing_is_done() -> None:
    p = plan_mirror(5, {"11": None, "12": None}, {}, {}, None, U5)
    assert (p.create, p.assemble, p.add) == ([], [], [])
    assert "no member is present" in p.problems[0]


def test_ep_another_arrays_superblock_is_refused_and_reported() -> None:
    p = plan_mirror(5, {"11": "sdb", "12": "sdc"}, {}, {"sdb": OTHER, "sdc": None}, None, None)
    assert (p.create, p.assemble, p.add) == ([], [], [])
    assert "member 11 (sdb) carries the superblock of another array (host-c:dvsan-9" in p.problems[0]


def test_ep_another_arrays_superblock_is_not_added_to_a_running_array() -> None:
    p = plan_mirror(5, {"11": "sdb", "13": "sdd"}, {}, {"sdd": OTHER}, array(("sdb", "in_sync"), degraded=1), U5)
    assert p.add == [] and "member 13 (sdd)" in p.problems[0]


def test_ep_same_name_other_uuid_is_another_array() -> None:
    impostor = Superblock("99999999:22222222:33333333:44444444", "any:dvsan-5", "raid1", 2)
    p = plan_mirror(5, {"11": "sdb", "12": "sdc"}, {}, {"sdb": impostor, "sdc": OURS}, None, U5)
    assert p.assemble == ["sdc"] and "member 11 (sdb)" in p.problems[0]


def test_ep_never_create_over_a_partition_table() -> None:
    p = plan_mirror(5, {"11": "sdb", "12": "sdc"}, {}, {"sdb": OtherSignature("an MBR partition table"), "sdc": None},
                    None, None)
    assert p.create == [] and "carries an MBR partition table" in p.problems[0]


def test_ep_never_create_when_this_host_made_the_array_before() -> None:
    """Two blank members but a recorded uuid: the data is elsewhere; an empty new array would hide it."""
    p = plan_mirror(5, {"13": "sdd", "14": "sde"}, {}, {"sdd": None, "sde": None}, None, U5)
    assert p.create == [] and "not creating a new, empty one" in p.problems[0]
    p = plan_mirror(5, {"13": "sdd", "14": "sde"}, {"11": "sdb"}, {"sdd": None, "sde": None, "sdb": OURS}, None, None)
    assert p.create == [] and "its data is on sdb" in p.problems[0]


def test_ep_one_blank_member_waits_for_the_other_before_creating() -> None:
    p = plan_mirror(5, {"11": "sdb", "12": None}, {}, {"sdb": None}, None, None)
    assert p.create == [] and "waiting for every member" in p.problems[0]


def test_gp_an_inactive_leftover_is_stopped_and_assembled_again() -> None:
    inactive = ArrayView("md127", "inactive", 2, 0, "idle", None, (Member("sdb", frozenset({"spare"}), None),))
    p = plan_mirror(5, {"11": "sdb", "12": "sdc"}, {}, {"sdb": OURS, "sdc": OURS}, inactive, U5)
    assert p.stop and p.assemble == ["sdb", "sdc"]
