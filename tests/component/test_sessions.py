"""Console sessions over the real station process: login sets an HttpOnly, SameSite=Strict cookie and
answers a CSRF token that every write must carry; without it a write is refused (a page of another
site can make a browser send the cookie, never read the token); logout ends the session."""

import httpx

from tests.component.test_tasks_api import user_token

ADMIN_PASSWORD = "test-admin-password-0"


def test_gp_a_console_session_reads_and_writes_with_its_csrf_token_then_logs_out(station):
    with httpx.Client(base_url=station.url, timeout=10) as c:
        r = c.post("/api/v1/session", json={"name": "admin", "password": ADMIN_PASSWORD})
        assert r.status_code == 200, r.text
        cookie = r.headers["set-cookie"]
        attrs = {a.strip().lower() for a in cookie.split(";")}
        assert cookie.startswith("dvsan_session=dvsan_")
        assert {"httponly", "samesite=strict", "path=/"} <= attrs and "secure" not in attrs  # plain HTTP here
        assert "token" not in r.json() and r.json()["csrf_token"] not in cookie
        csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
        assert c.get("/api/v1/units").status_code == 200
        # a write without the CSRF header, or with a wrong one: refused, and nothing made
        for h in ({}, {"X-CSRF-Token": "0" * 64}, {"X-CSRF-Token": ""}):
            w = c.post("/api/v1/tokens", json={"label": "x"}, headers=h)
            assert w.status_code == 403 and "X-CSRF-Token" in w.json()["detail"], w.text
        made = c.post("/api/v1/tokens", json={"label": "from-console"}, headers=csrf)
        assert made.status_code == 201, made.text
        labels = [t["label"] for t in c.get("/api/v1/tokens").json()]
        assert labels.count("x") == 0 and "from-console" in labels and "session" in labels
        # logging out needs the header too; then the cookie is cleared and the session is dead
        assert c.delete("/api/v1/session").status_code == 403
        out = c.delete("/api/v1/session", headers=csrf)
        assert out.status_code == 204 and 'dvsan_session=""' in out.headers["set-cookie"]
        old = r.cookies["dvsan_session"]
    assert httpx.get(station.url + "/api/v1/units", cookies={"dvsan_session": old}, timeout=10).status_code == 401


def test_ep_bad_logins_get_no_cookie_and_a_bearer_token_needs_no_csrf(station, tmp_path):
    user_token(station, tmp_path, "vera", "viewer")
    for body, status in (({"name": "admin", "password": "wrong-password"}, 401),
                         ({"name": "nobody", "password": "whatever-it-is"}, 401),
                         ({"name": "admin"}, 422), ({"name": "admin", "password": ADMIN_PASSWORD, "x": 1}, 422)):
        r = httpx.post(station.url + "/api/v1/session", json=body, timeout=10)
        assert r.status_code == status and "set-cookie" not in r.headers, (body, r.text)
    # a forged cookie: 401, whatever the CSRF header says
    r = httpx.post(station.url + "/api/v1/tokens", json={}, timeout=10, cookies={"dvsan_session": "dvsan_1_forged"},
                   headers={"X-CSRF-Token": "x"})
    assert r.status_code == 401
    # scripts with a bearer token are not a browser: no CSRF header needed
    assert httpx.post(station.url + "/api/v1/tokens", json={"label": "script"}, headers=station.auth,
                      timeout=10).status_code == 201
    # a viewer's session may read, and its writes are refused by permission, not only by CSRF
    with httpx.Client(base_url=station.url, timeout=10) as c:
        r = c.post("/api/v1/session", json={"name": "vera", "password": "a-long-enough-password"})
        csrf = {"X-CSRF-Token": r.json()["csrf_token"]}
        assert c.get("/api/v1/volumes").status_code == 200
        w = c.post("/api/v1/volumes/1/wipe", headers=csrf)
        assert w.status_code == 403 and "volumes.wipe" in w.json()["detail"]
    log = httpx.get(station.url + "/api/v1/audit?action=POST /api/v1/session", headers=station.auth, timeout=10).json()
    assert sorted(x["outcome"] for x in log) == [200, 401, 401, 422, 422]
