"""station.services.auth on a real migrated SQLite database: tokens, passwords, lockout, roles and
the host rule, each guard with the case that must be refused beside the one that must pass."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from dvsan.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from station.db import Database
from station.db.tables import Role, TokenRow, utcnow
from station.services import auth
from tests.unit.test_allocation_stateful import migrated_db

PW = "correct-horse-battery"
IQN = "iqn.2026-11.org.dvsan.lab:host-b"


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = migrated_db(tmp_path)
    with d.session() as s:
        auth.create_user(s, "alice", Role.ADMIN, PW)
        auth.create_user(s, "vic", Role.VIEWER, PW)
        auth.enrol_host(s, "host-b", [IQN])
    yield d
    d.dispose()


def token(db: Database, **kw: object) -> auth.NewToken:
    with db.session() as s:
        return auth.create_token(s, **kw)  # type: ignore[arg-type]


def who(db: Database, value: str, now: object = None) -> auth.Principal:
    with db.session() as s:
        return auth.authenticate(s, value, now)  # type: ignore[arg-type]


def test_gp_a_token_stands_for_its_user_or_host(db):
    t = token(db, user="alice")
    assert who(db, t.value) == auth.Principal("user", "alice", Role.ADMIN, t.id)
    h = token(db, host="host-b")
    assert who(db, h.value) == auth.Principal("host", "host-b", Role.HOST, h.id)
    with db.session() as s:
        row = s.get_one(TokenRow, t.id)
        assert row.secret_sha256 != t.value and t.value.split("_")[-1] not in row.secret_sha256


@pytest.mark.parametrize("mangle", [
    lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),       # one character of the secret off
    lambda v: v.replace("dvsan_", "dvsam_"),
    lambda v: "dvsan_999_" + v.split("_", 2)[2],               # another id
    lambda v: "dvsan_x_" + v.split("_", 2)[2],
    lambda v: "dvsan_1_",
    lambda v: "dvsan_" + "9" * 30 + "_x",                      # an id beyond any integer column
    lambda v: "",
])
def test_ep_a_wrong_token_is_refused(db, mangle):
    t = token(db, user="alice")
    with pytest.raises(Unauthenticated):
        who(db, mangle(t.value))


def test_ep_revoked_and_expired_tokens_are_refused(db):
    t = token(db, user="alice", ttl=timedelta(hours=1))
    assert who(db, t.value).name == "alice"
    with pytest.raises(Unauthenticated, match="expired"):
        who(db, t.value, utcnow() + timedelta(hours=1, seconds=1))
    with db.session() as s:
        auth.revoke_token(s, t.id, auth.Principal("user", "alice", Role.ADMIN, t.id))
    with pytest.raises(Unauthenticated, match="revoked"):
        who(db, t.value)


def test_ep_only_its_owner_or_an_admin_revokes_a_token(db):
    t = token(db, user="alice")
    with db.session() as s, pytest.raises(NotFound):
        auth.revoke_token(s, t.id, auth.Principal("user", "vic", Role.VIEWER, 99))


def test_gp_login_then_lockout_after_five_failures_then_unlock(db):
    now = utcnow()
    with db.session() as s:
        _row, t = auth.login(s, "vic", PW, now)
    assert who(db, t.value).name == "vic"
    for _ in range(auth.LOCK_AFTER):
        with db.session() as s, pytest.raises(Unauthenticated, match="wrong user name or password"):
            try:
                auth.login(s, "vic", "not-the-password", now)
            finally:
                s.commit()
    with db.session() as s, pytest.raises(Unauthenticated, match="locked until"):
        auth.login(s, "vic", PW, now + timedelta(seconds=10))
    with db.session() as s:
        auth.login(s, "vic", PW, now + auth.LOCK_FOR + timedelta(seconds=1))


def test_ep_four_failures_then_a_success_resets_the_count(db):
    now = utcnow()
    for _ in range(auth.LOCK_AFTER - 1):
        with db.session() as s, pytest.raises(Unauthenticated):
            try:
                auth.login(s, "vic", "nope-nope-nope", now)
            finally:
                s.commit()
    with db.session() as s:
        auth.login(s, "vic", PW, now)
    with db.session() as s, pytest.raises(Unauthenticated, match="wrong"):
        try:
            auth.login(s, "vic", "nope-nope-nope", now)
        finally:
            s.commit()
    with db.session() as s:
        auth.login(s, "vic", PW, now)      # one failure since the reset: not locked


@pytest.mark.parametrize(("name", "role", "password", "error"), [
    ("bob", "admin", "short", InvalidInput),
    ("bob", "root", PW, InvalidInput),
    ("bob", "host", PW, InvalidInput),
    ("Bob!", "admin", PW, InvalidInput),
    ("alice", "viewer", PW, Conflict),
])
def test_ep_bad_users_are_refused(db, name, role, password, error):
    with db.session() as s, pytest.raises(error):
        auth.create_user(s, name, role, password)


def test_gp_roles_grant_exactly_their_permissions():
    admin, op, viewer, host = (auth.Principal("user", "x", r, 1) for r in
                               (Role.ADMIN, Role.OPERATOR, Role.VIEWER, Role.HOST))
    assert admin.may("users.admin") and not op.may("users.admin") and not viewer.may("users.admin")
    assert op.may("assignments.write") and not viewer.may("assignments.write") and not host.may("assignments.write")
    assert viewer.may("pool.read") and not host.may("pool.read")
    assert host.may("host.storage") and not admin.may("host.storage")
    with pytest.raises(Forbidden, match="lacks the permission 'users.admin'"):
        op.require("users.admin")


def test_ep_the_host_rule(db):
    host = auth.Principal("host", "host-b", Role.HOST, 1)
    with db.session() as s:
        auth.check_host_request(s, host, "host-b", IQN)
        with pytest.raises(Forbidden, match="only for itself"):
            auth.check_host_request(s, host, "host-c", IQN)
        with pytest.raises(Forbidden, match="is not enrolled for host 'host-b'"):
            auth.check_host_request(s, host, "host-b", "iqn.2026-11.org.dvsan.lab:intruder")
        # an operator speaks for any host; a viewer for none
        auth.check_host_request(s, auth.Principal("user", "o", Role.OPERATOR, 2), "host-c", IQN)
        with pytest.raises(Forbidden):
            auth.check_host_request(s, auth.Principal("user", "v", Role.VIEWER, 3), "host-b", IQN)


def test_ep_hosts_need_valid_initiators_and_unique_names(db):
    with db.session() as s:
        with pytest.raises(InvalidInput):
            auth.enrol_host(s, "host-c", [])
        with pytest.raises(InvalidInput):
            auth.enrol_host(s, "host-c", ["not-an-iqn"])
        with pytest.raises(Conflict):
            auth.enrol_host(s, "host-b", [IQN])
