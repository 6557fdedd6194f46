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
