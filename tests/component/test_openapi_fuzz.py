"""The REST contract, fuzzed from the station's own OpenAPI (issue 6).

A real station process on loopback (its SQLite file, a unit agent with an in-memory LIO offering
small volumes) is driven by schemathesis from the station's own `/openapi.json`: every operation,
with schema-valid and schema-invalid input, checked for

- no 5xx on any input (`not_a_server_error`),
- every status the station answers is documented on the operation (`status_code_conformance`),
  with its content type and body schema (`content_type_conformance`, `response_schema_conformance`),
  and the headers it documents (`response_headers_conformance`).

Once authenticated as an admin (every route reachable), once without credentials (every route
but /healthz answers 401, documented). Bounded for CI: a fixed number of examples per operation and
a fixed seed (deterministic generation), no example database.
"""

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from dvsan.model import Partition
from station.app import create_app
from station.settings import StationSettings
from tests.component.conftest import StationProc, free_port
from tests.component.test_station_autoconf import MiB, UnitHarness, online, part

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# a request the schema allows is not refused (422) for a reason the schema does not state
SIGNED_IN_CHECKS = [*CHECKS, positive_data_acceptance]
# fixed for CI; DVSAN_FUZZ_SEED and DVSAN_FUZZ_EXAMPLES explore further by hand
MAX_EXAMPLES = int(os.environ.get("DVSAN_FUZZ_EXAMPLES", "25"))
SEED = int(os.environ.get("DVSAN_FUZZ_SEED", "20261106"))
N_VOLUMES = 24
PARTS: list[Partition] = [part(f"vdz{i}", 2048 + i * 8192, 4 * MiB) for i in range(1, N_VOLUMES + 1)]


def _config(*, security: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": SEED,
        "request-timeout": 60,
        "generation": {
            "max-examples": MAX_EXAMPLES,
            "deterministic": True,
            "database": "none",
            # the admin pass sends its own bearer token; the anonymous pass lets schemathesis make
            # up Authorization headers (garbage tokens must be 401 too, never 500)
            "with-security-parameters": security,
        },
        # the stateful phase follows links the schema does not declare: nothing to run
        "phases": {"stateful": {"enabled": False}},
    })


class Tokens:
    """A user's bearer token for the fuzzer, and a spare. The fuzzer may revoke any token it may
    see, the one in use too (DELETE /api/v1/tokens/{id} with a small id): the case runs as
    generated, and when it revoked the token in use the spare takes over (a new spare is made with
    it), so the rest of the run stays authenticated."""

    REVOKE = "DELETE /api/v1/tokens/{token_id}"

    def __init__(self, st: StationProc, token: str):
        self.st = st
        self.value = token
        self.spare = self._mint()

    @staticmethod
    def _id(token: str) -> int:
        return int(token.split("_")[1])

    def _mint(self) -> str:
        r = httpx.post(self.st.url + "/api/v1/tokens", json={"label": "fuzz spare"}, timeout=30,
                       headers=self.headers)
        r.raise_for_status()
        return str(r.json()["token"])

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.value}"}

    def after(self, case: Any, r: Any) -> None:
        if case.operation.label != self.REVOKE or case.method.upper() != "DELETE" or r.status_code != 200:
            return
        gone = r.json()["id"]
        if gone == self._id(self.value):
            self.value = self.spare
        if gone in (self._id(self.value), self._id(self.spare)) or self.value == self.spare:
            self.spare = self._mint()


@pytest.fixture(scope="module")
def fuzz_station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StationProc]:
    """One station for the whole file, with a unit online offering small volumes (so assignments
    can be made, released and looked up while the fuzzer runs)."""
    root: Path = tmp_path_factory.mktemp("fuzz")
    st = StationProc(root / "station", free_port(), free_port(socket.SOCK_DGRAM))
    st.data_dir.mkdir()
    st.start()
    u = UnitHarness(st, parts=PARTS)
    try:
        u.start()
        online(st, N_VOLUMES)
        yield st
    finally:
        u.close()
        st.stop()


@pytest.fixture(scope="module")
def admin_tokens(fuzz_station: StationProc) -> Tokens:
    return Tokens(fuzz_station, fuzz_station.token)


@pytest.fixture(scope="module")
def viewer_tokens(fuzz_station: StationProc, admin_tokens: Tokens) -> Tokens:
    """A viewer (reads only), made by the admin when the viewer's pass starts."""
    name, password = "fuzz-viewer-7479", "a-viewer-password-for-the-fuzz"
    httpx.post(fuzz_station.url + "/api/v1/users", headers=admin_tokens.headers, timeout=30,
               json={"name": name, "role": "viewer", "password": password}).raise_for_status()
    r = httpx.post(fuzz_station.url + "/api/v1/login", json={"name": name, "password": password}, timeout=30)
    r.raise_for_status()
    return Tokens(fuzz_station, r.json()["token"])


def station_openapi() -> dict[str, Any]:
    """The station's OpenAPI document, as the app builds it (nothing is started: the app opens
    its database and listeners only when it starts). The running station serves the same one
    (test_gp_the_fuzzed_schema_is_the_one_the_station_serves)."""
    return create_app(StationSettings.model_validate({})).openapi()


SPEC = station_openapi()
# The event stream never ends by itself: its answers to callers are tested in test_tasks_api.py;
# here only its 401 without credentials.
STREAMS = ["/api/v1/events"]
admin_schema = schemathesis.openapi.from_dict(SPEC, config=_config(security=False)).exclude(path=STREAMS)
# /healthz, /login and /session (POST) take no credentials: nothing to refuse there without them,
# and nothing the admin's pass does not cover already
NO_CREDENTIALS = ["/healthz", "/api/v1/login"]
viewer_schema = schemathesis.openapi.from_dict(SPEC, config=_config(security=False)).exclude(
    path=NO_CREDENTIALS + STREAMS).exclude(method="POST", path="/api/v1/session")
anonymous_schema = schemathesis.openapi.from_dict(SPEC, config=_config(security=True)).exclude(
    path=NO_CREDENTIALS).exclude(method="POST", path="/api/v1/session")


def test_gp_the_fuzzed_schema_is_the_one_the_station_serves(fuzz_station: StationProc) -> None:
    r = httpx.get(fuzz_station.url + "/openapi.json", timeout=30)
    assert r.status_code == 200
    assert r.json() == SPEC


@admin_schema.parametrize()
def test_gp_every_operation_keeps_its_contract_for_an_admin(case: Any, fuzz_station: StationProc,
                                                            admin_tokens: Tokens) -> None:
    r = case.call_and_validate(base_url=fuzz_station.url, headers=admin_tokens.headers, checks=SIGNED_IN_CHECKS)
    admin_tokens.after(case, r)
    if case.operation.path != "/api/v1/login" and case.operation.label != "POST /api/v1/session":
        # the token is always good: a 401 here would mean the rest of the run proves nothing
        assert r.status_code != 401, f"{case.operation.label}: the admin's token was refused: {r.text}"


@viewer_schema.parametrize()
def test_ep_a_viewer_reads_and_changes_nothing_but_its_own_tokens(case: Any, fuzz_station: StationProc,
                                                                  viewer_tokens: Tokens) -> None:
    # the 403s (each naming the permission) are answered and documented as the schema says
    r = case.call_and_validate(base_url=fuzz_station.url, headers=viewer_tokens.headers, checks=SIGNED_IN_CHECKS)
    viewer_tokens.after(case, r)
    assert r.status_code != 401, f"{case.operation.label}: the viewer's token was refused: {r.text}"
    if case.method.upper() != "GET" and case.operation.path not in ("/api/v1/tokens", "/api/v1/tokens/{token_id}"):
        assert not 200 <= r.status_code < 300, f"a viewer's {case.method} {case.formatted_path} was done"


@anonymous_schema.parametrize()
def test_ep_every_operation_but_healthz_is_401_without_credentials(case: Any, fuzz_station: StationProc) -> None:
    r = case.call_and_validate(base_url=fuzz_station.url, checks=CHECKS)
    if case.method.upper() == case.operation.method.upper():     # not a probe with another method (405)
        assert r.status_code == 401, f"{case.operation.label} answered {r.status_code} without credentials"


HOST = "fuzz-host-7479"
host_schema = schemathesis.openapi.from_dict(SPEC, config=_config(security=False)).exclude(
    path=NO_CREDENTIALS + STREAMS).exclude(method="POST", path="/api/v1/session")


@pytest.fixture(scope="module")
def host_headers(fuzz_station: StationProc, admin_tokens: Tokens) -> dict[str, str]:
    """An enrolled host's token (a host agent's), made by the admin when the host's pass starts."""
    r = httpx.post(fuzz_station.url + "/api/v1/hosts", headers=admin_tokens.headers, timeout=30,
                   json={"name": HOST, "initiator_iqns": [f"iqn.2026-11.org.dvsan.lab:{HOST}"]})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['token']['token']}"}


@host_schema.parametrize()
def test_ep_a_host_token_reaches_its_own_storage_and_nothing_else(case: Any, fuzz_station: StationProc,
                                                                  host_headers: dict[str, str]) -> None:
    r = case.call_and_validate(base_url=fuzz_station.url, headers=host_headers, checks=SIGNED_IN_CHECKS)
    assert r.status_code != 401, f"{case.operation.label}: the host's token was refused: {r.text}"
    if not 200 <= r.status_code < 300:
        return
    label = case.operation.label
    if case.method.upper() == "GET":
        # what a host may read is its own: assignments and tasks of its storage, nothing of the pool
        assert label in ("GET /api/v1/assignments", "GET /api/v1/assignments/{assignment_id}",
                         "GET /api/v1/mirrors", "GET /api/v1/mirrors/{mirror_id}",
                         "GET /api/v1/tasks", "GET /api/v1/tasks/{task_id}", "GET /api/v1/me"), f"a host read {label}"
        body = r.json()
        if label == "GET /api/v1/me":       # only who it is itself
            assert (body["kind"], body["name"], body["permissions"]) == ("host", HOST, ["host.storage"]), body
        for item in body if isinstance(body, list) else [body]:
            assert item.get("host", item.get("host_name")) in (HOST, None), f"{label} showed {item}"
    else:
        # a change only to its own storage: a request for itself, a release of its own
        assert label in ("POST /api/v1/assignments", "DELETE /api/v1/assignments/{assignment_id}",
                         "POST /api/v1/mirrors", "DELETE /api/v1/mirrors/{mirror_id}",
                         "PUT /api/v1/mirrors/{mirror_id}/health"), \
            f"a host's {case.method} {case.formatted_path} was done"
        if label in ("POST /api/v1/assignments", "POST /api/v1/mirrors", "PUT /api/v1/mirrors/{mirror_id}/health"):
            assert r.json()["host"] == HOST
