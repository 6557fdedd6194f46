"""Grants (station/services/auth.py): a role on one object and, when it propagates, under it; never on
a sibling whose name merely starts the same; loaded with the user's token, gone with the user."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from dvsan.errors import Conflict, Forbidden, InvalidInput, NotFound
from station.db import Database
from station.db.tables import GrantRow, Role
from station.services import assignments, auth
from station.services.auth import Grant, Principal
from tests.unit.test_allocation_stateful import migrated_db
from tests.unit.test_assignments_guard import unit_with


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = migrated_db(tmp_path)
    yield d
    d.dispose()


def scoped(*grants: Grant, role: str = Role.VIEWER) -> Principal:
    return Principal("user", "olga", role, 1, grants)


def test_gp_a_grant_covers_its_object_and_what_is_under_it_only() -> None:
    g = Grant(Role.OPERATOR, "/units/unit-a")
    assert g.covers("/units/unit-a") and g.covers("/units/unit-a/disks/vdb/vdb1")
    assert not g.covers("/units/unit-ab") and not g.covers("/units/unit-ab/disks/vdb")
    assert not g.covers("/units") and not g.covers("/volumes/1")
    flat = Grant(Role.OPERATOR, "/units/unit-a", propagate=False)
    assert flat.covers("/units/unit-a") and not flat.covers("/units/unit-a/disks/vdb")


def test_gp_permissions_come_from_the_role_everywhere_or_a_grant_on_the_object() -> None:
    op_a = scoped(Grant(Role.OPERATOR, "/units/unit-a"))
    vol_a, vol_b = ("/volumes/1", "/units/unit-a/disks/vdb/vdb1"), ("/volumes/2", "/units/unit-b/disks/vdb/vdb1")
    assert op_a.may("assignments.write", *vol_a) and not op_a.may("assignments.write", *vol_b)
    assert not op_a.may("assignments.write")                   # not everywhere
    assert op_a.may_somewhere("assignments.write") and not op_a.may_somewhere("users.admin")
    assert op_a.may("pool.read") and not op_a.may("users.admin", *vol_a)   # a grant gives its role only
    viewer_grant = scoped(Grant(Role.VIEWER, "/units/unit-a"))
    assert not viewer_grant.may("assignments.write", *vol_a) and not viewer_grant.may_somewhere("volumes.wipe")
    assert scoped(role=Role.OPERATOR).may("assignments.write", *vol_b)
    with pytest.raises(Forbidden, match=r"lacks the permission 'volumes.wipe' on /volumes/2"):
        op_a.require("volumes.wipe", *vol_b)
    op_a.require("volumes.wipe", *vol_a)
    by_id = scoped(Grant(Role.OPERATOR, "/volumes/1"))
    assert by_id.may("assignments.write", *vol_a) and not by_id.may("assignments.write", "/volumes/17")


@pytest.mark.parametrize("path", ["/units/unit-a", "/units/unit-a/disks/vdb", "/units/unit-a/disks/vdb/vdb1",
                                  "/volumes/17", "/hosts/host-b"])
def test_gp_object_paths_taken(path: str) -> None:
    assert auth.check_object(path) == path


@pytest.mark.parametrize("path", ["", "/", "units/unit-a", "/etc/passwd", "/units", "/units/", "/units/Unit-A",
                                  "/units/unit-a/", "/units/../x", "/units/unit a", "/volumes/1/2/3/4/5", None, 17])
def test_ep_object_paths_refused(path: object) -> None:
    with pytest.raises(InvalidInput, match="is not a path like /units/unit-a"):
        auth.check_object(path)  # type: ignore[arg-type]


def test_ep_grants_are_checked_loaded_with_the_token_and_gone_with_the_user(db: Database) -> None:
    with db.session() as s:
        auth.create_user(s, "olga", Role.VIEWER, "a-long-enough-password")
        t = auth.create_token(s, user="olga")
    with db.session() as s:
        g = auth.add_grant(s, "olga", Role.OPERATOR, "/units/unit-a", True, "user:admin")
        with pytest.raises(InvalidInput, match="a grant's role is one of operator, viewer"):
            auth.add_grant(s, "olga", Role.ADMIN, "/units/unit-a", True, "user:admin")
        with pytest.raises(NotFound):
            auth.add_grant(s, "nobody", Role.OPERATOR, "/units/unit-a", True, "user:admin")
        with pytest.raises(Conflict, match="already has operator on /units/unit-a"):
            auth.add_grant(s, "olga", Role.OPERATOR, "/units/unit-a", False, "user:admin")
    with db.session() as s:
        who = auth.authenticate(s, t.value)
    assert who.grants == (Grant(Role.OPERATOR, "/units/unit-a", True),)
    with db.session() as s:
        auth.delete_grant(s, g.id)
        with pytest.raises(NotFound):
            auth.delete_grant(s, g.id)
        auth.add_grant(s, "olga", Role.OPERATOR, "/hosts/host-b", True, "user:admin")
    with db.session() as s:
        assert auth.authenticate(s, t.value).grants == (Grant(Role.OPERATOR, "/hosts/host-b", True),)
        auth.delete_user(s, "olga")
    with db.session() as s:
        assert s.query(GrantRow).count() == 0


def test_ep_a_scoped_allocation_never_offers_a_volume_outside_the_scope(db: Database) -> None:
    unit_with(db, "unit-a", 64, 32)
    unit_with(db, "unit-b", 16)
    op_b = scoped(Grant(Role.OPERATOR, "/units/unit-b"))
    with db.session() as s:
        everything = assignments.free_candidates(s)
        mine = assignments.free_candidates(s, lambda *p: op_b.may("assignments.write", *p))
    assert {c.unit for c in everything} == {"unit-a", "unit-b"}
    assert [c.unit for c in mine] == ["unit-b"]
    aid = assignments.allocate(db, "host-1", "iqn.2026-11.org.dvsan.lab:host-1", "10.0.0.1", 10 * 2**20,
                               allowed=lambda *p: op_b.may("assignments.write", *p))
    with db.session() as s:
        assert assignments.get(s, aid).volume.unit_name == "unit-b"
        with pytest.raises(NotFound):
            assignments.check_assignable(s, 999)
        v = assignments.get(s, aid).volume_id
        with pytest.raises(Conflict, match="is assigned to host host-1"):
            assignments.check_assignable(s, v)


def test_gp_a_group_grant_holds_for_each_member_and_goes_with_the_group_or_the_membership(db: Database) -> None:
    with db.session() as s:
        for n in ("olga", "pavel", "rita"):
            auth.create_user(s, n, Role.VIEWER, "a-long-enough-password")
        tokens = {n: auth.create_token(s, user=n).value for n in ("olga", "pavel", "rita")}
        auth.create_group(s, "tenant-a", "user:admin")
        auth.add_member(s, "tenant-a", "olga")
        auth.add_member(s, "tenant-a", "pavel")
        auth.add_grant(s, None, Role.OPERATOR, "/units/unit-a", True, "user:admin", group="tenant-a")
        auth.add_grant(s, "olga", Role.VIEWER, "/hosts/host-b", False, "user:admin")
    with db.session() as s:
        olga, pavel, rita = (auth.authenticate(s, tokens[n]) for n in ("olga", "pavel", "rita"))
    assert olga.grants == (Grant(Role.OPERATOR, "/units/unit-a", True), Grant(Role.VIEWER, "/hosts/host-b", False))
    assert pavel.grants == (Grant(Role.OPERATOR, "/units/unit-a", True),)
    assert rita.grants == ()
    assert pavel.may("assignments.write", "/units/unit-a/disks/vdb/vdb1")
    assert not rita.may("assignments.write", "/units/unit-a/disks/vdb/vdb1")
    with db.session() as s:
        auth.remove_member(s, "tenant-a", "pavel")
        assert auth.authenticate(s, tokens["pavel"]).grants == ()
        auth.delete_group(s, "tenant-a")
    with db.session() as s:
        assert auth.authenticate(s, tokens["olga"]).grants == (Grant(Role.VIEWER, "/hosts/host-b", False),)
        assert [g.user_name for g in auth.list_grants(s)] == ["olga"]


def test_ep_groups_refuse_what_is_wrong_and_change_nothing(db: Database) -> None:
    with db.session() as s:
        auth.create_user(s, "olga", Role.VIEWER, "a-long-enough-password")
        auth.create_group(s, "tenant-a", "user:admin")
        auth.add_member(s, "tenant-a", "olga")
        with pytest.raises(Conflict, match="group 'tenant-a' exists"):
            auth.create_group(s, "tenant-a", "user:admin")
        with pytest.raises(InvalidInput):
            auth.create_group(s, "Tenant A", "user:admin")
        with pytest.raises(Conflict, match="already"):
            auth.add_member(s, "tenant-a", "olga")
        with pytest.raises(NotFound, match="no user 'nobody'"):
            auth.add_member(s, "tenant-a", "nobody")
        with pytest.raises(NotFound, match="no group 'tenant-b'"):
            auth.add_member(s, "tenant-b", "olga")
        with pytest.raises(NotFound, match="is not in group"):
            auth.remove_member(s, "tenant-a", "rita")
        with pytest.raises(NotFound, match="no group 'tenant-b'"):
            auth.add_grant(s, None, Role.OPERATOR, "/units/unit-a", True, "user:admin", group="tenant-b")
        with pytest.raises(InvalidInput, match="exactly one"):
            auth.add_grant(s, "olga", Role.OPERATOR, "/units/unit-a", True, "user:admin", group="tenant-a")
        with pytest.raises(InvalidInput, match="exactly one"):
            auth.add_grant(s, None, Role.OPERATOR, "/units/unit-a", True, "user:admin")
        auth.add_grant(s, None, Role.OPERATOR, "/units/unit-a", True, "user:admin", group="tenant-a")
        with pytest.raises(Conflict, match="group 'tenant-a' already has operator on /units/unit-a"):
            auth.add_grant(s, None, Role.OPERATOR, "/units/unit-a", True, "user:admin", group="tenant-a")
        # the same role on the same object for the user itself is a separate grant
        auth.add_grant(s, "olga", Role.OPERATOR, "/units/unit-a", True, "user:admin")
    with db.session() as s:
        assert [(g, m) for g, m in ((g.name, m) for g, m in auth.list_groups(s))] == [("tenant-a", ["olga"])]
        auth.delete_user(s, "olga")
    with db.session() as s:
        assert auth.group_members(s, "tenant-a") == []
        assert [g.group_name for g in auth.list_grants(s)] == ["tenant-a"]


def test_gp_a_host_is_enrolled_with_who_may_use_its_storage_and_forgotten_with_it(db: Database) -> None:
    with db.session() as s:
        auth.create_user(s, "olga", Role.VIEWER, "a-long-enough-password")
        auth.create_group(s, "tenant-a", "user:admin")
        auth.enrol_host(s, "host-b", ["iqn.2026-11.org.dvsan.lab:host-b"], ["olga"], ["tenant-a"], "user:admin")
        assert auth.host_users(s, "host-b") == (["olga"], ["tenant-a"])
        t = auth.create_token(s, user="olga")
    with db.session() as s:
        olga = auth.authenticate(s, t.value)
    assert olga.may("assignments.write", "/hosts/host-b") and not olga.may("assignments.write", "/hosts/host-c")
    # an unknown user: nothing enrolled (the session rolls back)
    with pytest.raises(NotFound, match="no user 'nobody'"), db.session() as s:
        auth.enrol_host(s, "host-c", ["iqn.2026-11.org.dvsan.lab:host-c"], ["nobody"], [], "user:admin")
    with db.session() as s:
        assert [h.name for h in auth.list_hosts(s)] == ["host-b"]
        auth.add_grant(s, "olga", Role.VIEWER, "/hosts/host-bb", True, "user:admin")
        auth.delete_host(s, "host-b")
    with db.session() as s:
        # its grants went with it (a host enrolled later under the name starts with none); a
        # sibling whose name merely starts the same keeps its grant
        assert [g.object for g in auth.list_grants(s)] == ["/hosts/host-bb"]
