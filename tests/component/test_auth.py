"""Authentication and least privilege at the real station over loopback (issue 6): no route but
/healthz without a token; roles; host tokens scoped to their own host and enrolled initiators;
login lockout; the bootstrap CLI; and no secret in the station's log."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx

from tests.component.test_host_agent import enrol_host
from tests.component.test_station_autoconf import UnitHarness, online

IQN_B = "iqn.2026-11.org.dvsan.lab:host-b"
IQN_C = "iqn.2026-11.org.dvsan.lab:host-c"


def call(station: Any, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.request(method, station.url + path, headers=headers, timeout=30, **kw)


def user_token(station: Any, name: str, role: str) -> str:
    r = call(station, "POST", "/api/v1/users", station.token,
             json={"name": name, "role": role, "password": f"{name}-password-0123"})
    assert r.status_code == 201, r.text
    r = call(station, "POST", "/api/v1/login", json={"name": name, "password": f"{name}-password-0123"})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def host_token(station: Any, tmp_path: Path, name: str, iqn: str) -> str:
    return enrol_host(station, tmp_path, name, iqn).read_text().strip()


def routes(station: Any) -> list[tuple[str, str]]:
    spec = call(station, "GET", "/openapi.json", station.token).json()
    out = []
    for path, ops in spec["paths"].items():
        for method in ops:
            concrete = re.sub(r"\{[^}]*_id\}", "1", path)
            out.append((method.upper(), re.sub(r"\{[^}]*\}", "unit-x", concrete)))
    return out


def test_ep_every_route_but_healthz_needs_a_token(station):
    seen = routes(station)
    assert len(seen) > 20
    for method, path in seen:
        if path == "/healthz":
            assert call(station, method, path).status_code == 200
            continue
        if path == "/api/v1/login" or (method, path) == ("POST", "/api/v1/session"):
            continue                          # where a name and password get a token or a session
        for token in (None, "dvsan_1_not-the-secret", "not-even-a-token", "dvsan_99999_x"):
            r = call(station, method, path, token, json={})
            assert r.status_code == 401, (method, path, token, r.status_code, r.text)
            assert r.headers.get("www-authenticate") == "Bearer"
            assert r.json()["error"] == "Unauthenticated"
    assert call(station, "GET", "/healthz").json()["status"] == "ok"


def test_ep_a_viewer_reads_but_changes_nothing_and_403_names_the_permission(station):
    viewer = user_token(station, "vera", "viewer")
    assert call(station, "GET", "/api/v1/volumes", viewer).status_code == 200
    assert call(station, "GET", "/api/v1/assignments", viewer).status_code == 200
    writes = [("POST", "/api/v1/assignments", {"host": "host-b", "initiator_iqn": IQN_B,
                                               "host_address": "127.0.0.2", "size": "1M"}),
              ("DELETE", "/api/v1/assignments/1", None), ("POST", "/api/v1/volumes/1/wipe", None),
              ("POST", "/api/v1/hosts", {"name": "host-z", "initiator_iqns": [IQN_B]}),
              ("POST", "/api/v1/users", {"name": "eve", "role": "admin", "password": "x" * 16}),
              ("POST", "/api/v1/enrolment/unit-x/approve", {"fingerprint": "00"}),
              ("POST", "/api/v1/enrolment/unit-x/revoke", None)]
    for method, path, body in writes:
        r = call(station, method, path, viewer, json=body)
        assert r.status_code in (403, 404), (method, path, r.text)
        if r.status_code == 403:
            assert "lacks the permission" in r.json()["detail"] and "vera" in r.json()["detail"]
    # 404 is only for the objects that do not exist; the permission is checked first where it can be
    assert call(station, "POST", "/api/v1/volumes/1/wipe", viewer).status_code == 403
    operator = user_token(station, "otto", "operator")
    r = call(station, "POST", "/api/v1/users", operator, json={"name": "eve", "role": "admin", "password": "x" * 16})
    assert r.status_code == 403 and "'users.admin'" in r.json()["detail"]


def test_ep_a_host_token_acts_only_for_its_own_host_and_enrolled_initiators(station, tmp_path):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        tb = host_token(station, tmp_path, "host-b", IQN_B)
        tc = host_token(station, tmp_path, "host-c", IQN_C)
        ask = {"host_address": "127.0.0.2", "size": "100M"}
        # another host's name, an initiator not enrolled for it: refused, nothing allocated
        r = call(station, "POST", "/api/v1/assignments?wait=60", tb, json={"host": "host-c", "initiator_iqn": IQN_C, **ask})
        assert r.status_code == 403 and "only for itself" in r.json()["detail"]
        r = call(station, "POST", "/api/v1/assignments?wait=60", tb, json={"host": "host-b", "initiator_iqn": IQN_C, **ask})
        assert r.status_code == 403 and f"initiator {IQN_C} is not enrolled for host 'host-b'" in r.json()["detail"]
        assert station.get("/api/v1/assignments").json() == []
        # its own: fine
        b = call(station, "POST", "/api/v1/assignments?wait=60", tb, json={"host": "host-b", "initiator_iqn": IQN_B, **ask})
        assert b.status_code == 201, b.text
        c = call(station, "POST", "/api/v1/assignments?wait=60", tc, json={"host": "host-c", "initiator_iqn": IQN_C, **ask})
        assert c.status_code == 201, c.text
        bid, cid = b.json()["id"], c.json()["id"]
        # host-b sees only its own, cannot read or release host-c's, and sees nothing of the pool
        assert [a["id"] for a in call(station, "GET", "/api/v1/assignments", tb).json()] == [bid]
        assert [a["id"] for a in call(station, "GET", "/api/v1/assignments?host=host-c", tb).json()] == [bid]
        assert call(station, "GET", f"/api/v1/assignments/{cid}", tb).status_code == 404
        assert call(station, "DELETE", f"/api/v1/assignments/{cid}?wait=60", tb).status_code == 404
        assert cid in [a["id"] for a in station.get("/api/v1/assignments").json()]
        for path in ("/api/v1/volumes", "/api/v1/units", "/api/v1/hosts", "/api/v1/tokens", "/api/v1/enrolment"):
            assert call(station, "GET", path, tb).status_code == 403, path
        assert call(station, "DELETE", f"/api/v1/assignments/{bid}?wait=60", tb).status_code == 200
        # a host removed: its token is dead at once
        assert call(station, "DELETE", "/api/v1/hosts/host-c", station.token).status_code == 409  # holds storage
        assert call(station, "DELETE", f"/api/v1/assignments/{cid}?wait=60", station.token).status_code == 200
        assert call(station, "DELETE", "/api/v1/hosts/host-c", station.token).status_code == 204
        r = call(station, "GET", "/api/v1/assignments", tc)
        assert r.status_code == 401 and r.json()["detail"] == "unknown token"
    finally:
        u.close()


def test_ep_failed_logins_are_counted_and_lock_the_account(station):
    user_token(station, "lena", "viewer")
    for _ in range(5):
        r = call(station, "POST", "/api/v1/login", json={"name": "lena", "password": "wrong-password-000"})
        assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    r = call(station, "POST", "/api/v1/login", json={"name": "lena", "password": "lena-password-0123"})
    assert r.status_code == 401 and "locked until" in r.json()["detail"]
    # an unknown name reads exactly as a wrong password
    r = call(station, "POST", "/api/v1/login", json={"name": "nobody", "password": "whatever-password"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong user name or password"
    assert call(station, "POST", "/api/v1/login", json={"name": "lena"}).status_code == 422


def test_gp_tokens_are_listed_without_their_value_and_revocable(station):
    t = call(station, "POST", "/api/v1/tokens", station.token, json={"label": "backup-script", "days": 1})
    assert t.status_code == 201
    new = t.json()
    assert call(station, "GET", "/api/v1/units", new["token"]).status_code == 200
    listed = call(station, "GET", "/api/v1/tokens", station.token).json()
    assert new["token"] not in str(listed) and any(x["label"] == "backup-script" for x in listed)
    assert call(station, "DELETE", f"/api/v1/tokens/{new['id']}", station.token).status_code == 200
    assert call(station, "GET", "/api/v1/units", new["token"]).status_code == 401
    assert call(station, "DELETE", f"/api/v1/tokens/{2**70}", station.token).status_code == 422


def test_ep_the_bootstrap_cli_refuses_bad_input_with_a_clear_message(station, tmp_path):
    weak = tmp_path / "weak.pw"
    weak.write_text("short\n")
    os.chmod(weak, 0o600)
    r = station.admin_command("create-user", "bob", "--role", "admin", "--password-file", str(weak))
    assert r.returncode == 2 and "at least 12 characters" in r.stderr
    r = station.admin_command("create-user", "admin", "--role", "admin", "--password-file",
                              str(station.data_dir / "admin.password"))
    assert r.returncode == 2 and "user 'admin' exists" in r.stderr
    loose = tmp_path / "loose.pw"
    loose.write_text("a-long-enough-password\n")
    os.chmod(loose, 0o644)
    r = station.admin_command("create-user", "bob", "--role", "admin", "--password-file", str(loose))
    assert r.returncode == 2 and "chmod 600" in r.stderr
    r = station.admin_command("create-token", "nobody")
    assert r.returncode == 2 and "no user 'nobody'" in r.stderr
    r = station.admin_command("enrol-host", "host-q", "--initiator", "not-an-iqn")
    assert r.returncode == 2
    r = station.admin_command("enrol-host", "host-q", "--initiator", IQN_B, "--token-file", str(tmp_path / "q.token"))
    assert r.returncode == 0, r.stderr
    assert oct((tmp_path / "q.token").stat().st_mode & 0o777) == "0o600"
    assert call(station, "GET", "/api/v1/assignments", (tmp_path / "q.token").read_text().strip()).status_code == 200


def test_gp_no_secret_reaches_the_stations_log(station, tmp_path):
    secrets = [station.token, (station.data_dir / "admin.password").read_text().strip()]
    secrets.append(user_token(station, "olga", "operator"))
    secrets.append("olga-password-0123")
    secrets.append(host_token(station, tmp_path, "host-b", IQN_B))
    call(station, "POST", "/api/v1/login", json={"name": "olga", "password": "olga-wrong-password"})
    call(station, "GET", "/api/v1/units", secrets[-1])
    station.stop()
    log = station.log.read_text()
    assert "GET /api/v1/units" in log or "/api/v1/" in log
    for s in secrets:
        assert s not in log and s.split("_")[-1] not in log


def test_gp_every_write_login_and_refusal_is_audited_without_secrets(station, tmp_path):
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        tb = host_token(station, tmp_path, "host-b", IQN_B)
        viewer = user_token(station, "vera", "viewer")
        ask = {"host_address": "127.0.0.2", "size": "100M"}
        ok = call(station, "POST", "/api/v1/assignments?wait=60", tb, json={"host": "host-b", "initiator_iqn": IQN_B, **ask})
        assert ok.status_code == 201
        call(station, "POST", "/api/v1/assignments?wait=60", tb, json={"host": "host-c", "initiator_iqn": IQN_B, **ask})
        call(station, "DELETE", f"/api/v1/assignments/{ok.json()['id']}?wait=60", viewer)
        call(station, "DELETE", f"/api/v1/assignments/{ok.json()['id']}?wait=60", tb)
        call(station, "POST", "/api/v1/login", json={"name": "vera", "password": "not-veras-password"})
        call(station, "DELETE", "/api/v1/assignments/1")
        log = call(station, "GET", "/api/v1/audit?limit=1000", station.token).json()
        rows = [(r["principal"], r["action"], r["outcome"]) for r in reversed(log)]
        for expected in [("user:admin", "POST /api/v1/hosts", 201),
                         ("anonymous", "POST /api/v1/login", 200),
                         ("host:host-b", "POST /api/v1/assignments", 201),
                         ("host:host-b", "POST /api/v1/assignments", 403),
                         ("user:vera", "DELETE /api/v1/assignments/{assignment_id}", 403),
                         ("host:host-b", "DELETE /api/v1/assignments/{assignment_id}", 200),
                         ("anonymous", "POST /api/v1/login", 401),
                         ("anonymous", "DELETE /api/v1/assignments/{assignment_id}", 401)]:
            assert expected in rows, (expected, rows)
        made = next(r for r in log if r["action"] == "POST /api/v1/assignments" and r["outcome"] == 201)
        assert '"host": "host-b"' in made["detail"] and made["source"] == "127.0.0.1"
        text = str(log)
        assert tb not in text and viewer not in text and "not-veras-password" not in text
        # the audit log is for admins only, and has no route that changes it
        assert call(station, "GET", "/api/v1/audit", viewer).status_code == 403
        assert call(station, "DELETE", "/api/v1/audit", station.token).status_code == 405
    finally:
        u.close()
