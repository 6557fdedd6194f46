"""The console's pages and `GET /api/v1/me` over the real station process, without a browser: the
pages are public shells holding no data (a page without a session redirects to sign-in), served
with a strict Content-Security-Policy; `/me` tells a client what its caller may do, and a console
session its CSRF token."""

from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from station.services.auth import csrf_token

PASSWORD = "a-long-enough-password"


def make_user(station, name: str, role: str) -> None:
    """A user with PASSWORD, made by the test admin through the API."""
    r = httpx.post(station.url + "/api/v1/users", headers=station.auth, timeout=30,
                   json={"name": name, "role": role, "password": PASSWORD})
    assert r.status_code == 201, r.text


@contextmanager
def session(station, name="admin", password="test-admin-password-0") -> Iterator[httpx.Client]:
    with httpx.Client(base_url=station.url, timeout=30) as c:
        r = c.post("/api/v1/session", json={"name": name, "password": password})
        assert r.status_code == 200, r.text
        yield c


def test_gp_pages_are_shells_behind_a_session_cookie(station):
    with httpx.Client(base_url=station.url, timeout=30) as anon:
        r = anon.get("/")
        assert (r.status_code, r.headers["location"]) == (303, "/console/overview")
        r = anon.get("/console/units")
        assert (r.status_code, r.headers["location"]) == (303, "/console/signin?next=/console/units")
        r = anon.get("/console/signin")
        assert r.status_code == 200 and 'id="signin-form"' in r.text
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert anon.get("/console/static/console.js").status_code == 200
        assert anon.get("/console/static/console.css").headers["content-type"].startswith("text/css")
    with session(station) as c:
        for name in ("overview", "units", "hosts", "assignments", "tasks", "audit", "users"):
            r = c.get(f"/console/{name}")
            assert r.status_code == 200, (name, r.text)
            assert f'data-page="{name}"' in r.text and "<script>" not in r.text
            assert r.headers["cache-control"] == "no-store"
        # the admin pages' links are there but hidden until /me says the caller is an admin
        assert 'href="/console/users" data-needs="users.admin" hidden' in c.get("/console/overview").text


def test_ep_unknown_pages_and_files_are_404_and_not_in_the_api_schema(station):
    with session(station) as c:
        r = c.get("/console/nothing-here")
        assert r.status_code == 404 and "no such page" in r.text
        assert c.get("/console/static/../../app.py").status_code == 404
        assert c.get("/console/static/nope.js").status_code == 404
    paths = station.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/console")]


def test_gp_me_says_who_calls_what_it_may_and_a_sessions_csrf_token(station):
    r = station.get("/api/v1/me")
    assert r.status_code == 200, r.text
    me = r.json()
    assert (me["kind"], me["name"], me["role"], me["csrf_token"]) == ("user", "admin", "admin", None)
    assert {"users.admin", "assignments.write", "volumes.wipe"} <= set(me["permissions"])
    make_user(station, "vera", "viewer")
    with session(station, "vera", PASSWORD) as c:
        me = c.get("/api/v1/me").json()
        assert me["permissions"] == ["hosts.read", "pool.read", "tokens.own"] and me["grants"] == []
        assert me["csrf_token"] == csrf_token(c.cookies["dvsan_session"])
        # an operator's grant shows among what the viewer may do somewhere
        g = httpx.post(station.url + "/api/v1/grants", headers=station.auth, timeout=30,
                       json={"user": "vera", "role": "operator", "object": "/units/unit-a"})
        assert g.status_code == 201, g.text
        me = c.get("/api/v1/me").json()
        assert "assignments.write" in me["permissions"] and "users.admin" not in me["permissions"]
        assert me["grants"] == [{"role": "operator", "object": "/units/unit-a", "propagate": True}]


def test_ep_me_without_credentials_is_401(station):
    for headers in ({}, {"Authorization": "Bearer dvsan_1_nope"}, {"Cookie": "dvsan_session=dvsan_1_nope"}):
        r = httpx.get(station.url + "/api/v1/me", headers=headers, timeout=30)
        assert r.status_code == 401, (headers, r.text)
