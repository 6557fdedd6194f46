"""Regression tests for what the OpenAPI fuzzer (test_openapi_fuzz.py) found, each on its own:
a real station process on loopback."""

import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.component.conftest import StationProc, free_port

IQN = "iqn.2026-11.org.dvsan.lab:host-c"


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StationProc]:
    root: Path = tmp_path_factory.mktemp("contract")
    s = StationProc(root / "station", free_port(), free_port(socket.SOCK_DGRAM))
    s.data_dir.mkdir()
    s.start()
    yield s
    s.stop()


def call(st: StationProc, method: str, path: str, auth: bool = True, **kw: Any) -> httpx.Response:
    return httpx.request(method, st.url + path, headers={**(st.auth if auth else {}), **kw.pop("headers", {})},
                         timeout=30, **kw)


def is_validation_error(r: httpx.Response) -> bool:
    """FastAPI's 422: a list of issues, each with where and what (ValidationErrorPublic)."""
    return r.status_code == 422 and isinstance(r.json()["detail"], list) and all(
        {"loc", "msg", "type"} <= set(i) for i in r.json()["detail"])


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v1/assignments/{}"), ("DELETE", "/api/v1/assignments/{}"),
    ("DELETE", "/api/v1/tokens/{}"), ("POST", "/api/v1/volumes/{}/wipe")])
def test_ep_ids_beyond_sqlites_integers_are_422_and_the_largest_is_404_never_500(st, method, path):
    for too_big in (2**63, 2**64 + 1, 10**30):
        r = call(st, method, path.format(too_big))
        assert is_validation_error(r), (too_big, r.status_code, r.text)
    assert call(st, method, path.format(2**63 - 1)).status_code == 404
    assert call(st, method, path.format(0)).status_code == 422


@pytest.mark.parametrize("body", [b"\xff\xfe{", b"{\"name\": \"\xc3\x28\"}", b"[" * 100_000])
def test_ep_a_body_that_cannot_be_read_is_422_like_malformed_json_not_400(st, body):
    # the station once answered FastAPI's undocumented 400 "There was an error parsing the body"
    r = call(st, "POST", "/api/v1/hosts", content=body, headers={"Content-Type": "application/json"})
    assert is_validation_error(r), (r.status_code, r.text)
    assert r.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.parametrize("body", [b"\xff", b"{", b"[]", b'{"name": "x"}'])
@pytest.mark.parametrize("path", ["/api/v1/users", "/api/v1/hosts", "/api/v1/assignments", "/api/v1/tokens"])
def test_ep_without_credentials_a_bad_body_is_401_not_judged(st, path, body):
    # FastAPI reads a body before it asks who is calling: a body it could not read (or parse) was
    # refused with 400/422 to a caller who had not said who they are
    r = call(st, "POST", path, auth=False, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 401, (r.status_code, r.text)
    assert r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json()["error"] == "Unauthenticated"
    bad = call(st, "POST", path, auth=False, content=body,
               headers={"Content-Type": "application/json", "Authorization": "Bearer dvsan_1_nope"})
    assert bad.status_code == 401


def test_ep_login_still_judges_its_body_it_needs_no_credentials(st):
    r = call(st, "POST", "/api/v1/login", auth=False, content=b"\xff", headers={"Content-Type": "application/json"})
    assert is_validation_error(r)


def aware(text: str) -> datetime:
    t = datetime.fromisoformat(text)
    assert t.utcoffset() == timedelta(0), text
    return t


def test_gp_times_read_back_from_the_database_carry_their_utc_offset(st):
    # SQLite hands back naive datetimes: they went out without an offset, not the OpenAPI date-time
    call(st, "POST", "/api/v1/tokens", json={"label": "t", "days": 1}).raise_for_status()
    for u in call(st, "GET", "/api/v1/users").json():
        aware(u["created_at"])
    tokens = call(st, "GET", "/api/v1/tokens").json()
    assert tokens
    for t in tokens:
        aware(t["created_at"])
        for k in ("expires_at", "last_used_at"):
            if t[k] is not None:
                aware(t[k])
    entries = call(st, "GET", "/api/v1/audit").json()
    assert entries
    for e in entries:
        aware(e["at"])


def test_gp_the_schema_states_the_checks_the_station_makes(st):
    spec = call(st, "GET", "/openapi.json", auth=False).json()
    comp = spec["components"]["schemas"]
    name = comp["UserCreate"]["properties"]["name"]
    assert name["pattern"] == "^[a-z0-9][a-z0-9.-]{0,62}$" and name["maxLength"] == 63
    assert sorted(comp["UserCreate"]["properties"]["role"]["enum"]) == ["admin", "operator", "viewer"]
    assert comp["HostCreate"]["properties"]["name"]["pattern"] == name["pattern"]
    assert comp["HostCreate"]["properties"]["initiator_iqns"]["items"]["pattern"].startswith("^(iqn")
    assert comp["KeyEnrolment"]["properties"]["public_key"]["pattern"] == "^[A-Za-z0-9+/]{43}=$"
    size = comp["AssignmentCreate"]["properties"]["size"]["anyOf"]
    assert {"minimum": 1, "maximum": 2**53} == {k: size[0][k] for k in ("minimum", "maximum")}
    for path, method in (("/api/v1/units/{name}", "get"), ("/api/v1/users/{name}", "delete"),
                         ("/api/v1/enrolment/{name}/key", "put")):
        (p,) = spec["paths"][path][method]["parameters"]
        assert p["schema"]["pattern"] == name["pattern"], path
    states = spec["paths"]["/api/v1/enrolment"]["get"]["parameters"][0]["schema"]["anyOf"][0]
    assert comp[states["$ref"].rsplit("/", 1)[1]]["enum"] == ["pending", "enrolled", "revoked"]


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/users", {"name": "Bob", "role": "viewer", "password": "long-enough-password"}),
    ("/api/v1/users", {"name": "bob", "role": "root", "password": "long-enough-password"}),
    ("/api/v1/hosts", {"name": "host-c", "initiator_iqns": ["IQN.2026-11.X"]}),
    ("/api/v1/assignments", {"host": "host-c", "initiator_iqn": IQN, "host_address": "10.0.0.1",
                             "size": 2**53 + 1}),
    ("/api/v1/assignments", {"host": "host-c", "initiator_iqn": IQN, "host_address": "10.0.0.1",
                             "size": " 0 "}),
    ("/api/v1/assignments", {"host": "host-c", "initiator_iqn": IQN, "host_address": "10.0.0.1",
                             "size": "0.5"}),
    # the IQN suffix is anything but whitespace, whitespace as Python means it (U+0085, U+001C too):
    # the schema once said `[^\s]`, which JSON Schema reads otherwise
    ("/api/v1/hosts", {"name": "host-c", "initiator_iqns": ["iqn.2026-11.x:a\u0085b"]}),
    ("/api/v1/hosts", {"name": "host-c", "initiator_iqns": ["iqn.2026-11.x:a\x1cb"]}),
    ("/api/v1/hosts", {"name": "host-c", "initiator_iqns": ["iqn.2026-11.x:a\u3000b"]}),
])
def test_ep_values_the_schema_refuses_are_refused_by_the_schema_with_each_issue(st, path, body):
    r = call(st, "POST", path, json=body)
    assert is_validation_error(r), (r.status_code, r.text)


def test_gp_a_size_the_schema_allows_is_never_refused_as_malformed(st):
    # a huge size as a string is well formed: no volume fits it (409), as for any other size
    for size in ("9999999 TiB", "1" * 60, " 1 ", "1.5k", "000001"):
        r = call(st, "POST", "/api/v1/assignments?wait=60", json={"host": "host-c", "initiator_iqn": IQN,
                                                          "host_address": "10.0.0.1", "size": size})
        assert r.status_code == 409 and r.json()["error"] == "InsufficientCapacity", (size, r.text)


def test_gp_an_iqn_suffix_of_any_non_blank_characters_is_taken(st):
    for iqn in ("iqn.2026-11.x:\u00f8\U000b2ceb", "iqn.2026-11.x:a\ufeffb", "eui.0123456789abcdef"):
        r = call(st, "POST", "/api/v1/hosts", json={"name": "host-d", "initiator_iqns": [iqn]})
        assert r.status_code == 201, (iqn, r.text)
        assert call(st, "DELETE", "/api/v1/hosts/host-d").status_code == 204


def test_ep_enrolling_a_key_under_a_bad_name_or_of_a_bad_length_is_a_schema_refusal(st):
    key = "A" * 43 + "="
    assert is_validation_error(call(st, "PUT", "/api/v1/enrolment/Unit-A/key", json={"public_key": key}))
    assert is_validation_error(call(st, "PUT", "/api/v1/enrolment/unit-a/key", json={"public_key": "AAAA"}))
    assert call(st, "PUT", "/api/v1/enrolment/unit-a/key", json={"public_key": key}).status_code == 200
    assert is_validation_error(call(st, "GET", "/api/v1/enrolment?state=gone"))
