"""host_agent.client's /api/v1/mirrors calls against a scripted transport (the request bodies, a
followed task, the error mapping); the real station answers them in the component tests."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from dvsan.errors import Conflict, Forbidden, InvalidInput
from host_agent.client import StationClient

MIRROR = {"id": 5, "host": "host-b", "requested_bytes": 1 << 30, "members": [{"id": 11}, {"id": 12}]}


def client(handler: Any) -> tuple[StationClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return handler(req)  # type: ignore[no-any-return]

    c = StationClient("http://127.0.0.1:7480", token="tok")
    c._http = httpx.Client(base_url=c.base_url, transport=httpx.MockTransport(record))
    return c, seen


def test_gp_request_mirror_posts_size_bytes_and_gets_the_mirror() -> None:
    c, seen = client(lambda req: httpx.Response(201, json=MIRROR))
    assert c.request_mirror("host-b", "iqn.x:b", "10.0.0.9", 1 << 30) == MIRROR
    assert seen[0].method == "POST" and seen[0].url.path == "/api/v1/mirrors" and "wait" in seen[0].url.params
    assert json.loads(seen[0].content) == {"host": "host-b", "initiator_iqn": "iqn.x:b", "host_address": "10.0.0.9",
                                           "size_bytes": 1 << 30}


def test_gp_request_mirror_follows_its_task() -> None:
    task = {"id": 3, "kind": "assign", "object": "/hosts/host-b", "state": "running", "message": "exporting"}

    def answer(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/api/v1/mirrors":
            return httpx.Response(202, json=task)
        if req.url.path == "/api/v1/tasks/3":
            return httpx.Response(200, json={**task, "state": "succeeded", "result": {"mirror": 5}})
        assert req.url.path == "/api/v1/mirrors/5"
        return httpx.Response(200, json=MIRROR)

    c, _ = client(answer)
    assert c.request_mirror("host-b", "iqn.x:b", "10.0.0.9", 1 << 30)["id"] == 5


def test_ep_request_mirror_without_two_units_is_a_conflict() -> None:
    c, _ = client(lambda req: httpx.Response(409, json={"detail": "no two units each have a free volume of at least "
                                                                   "1073741824 bytes; free: unit-a 2 GiB"}))
    with pytest.raises(Conflict, match="no two units each have a free volume"):
        c.request_mirror("host-b", "iqn.x:b", "10.0.0.9", 1 << 30)


def test_gp_health_report_body() -> None:
    c, seen = client(lambda req: httpx.Response(200, json=MIRROR))
    c.report_mirror_health(5, "resyncing", {"11": "active", "13": "resyncing"}, 42.5, "md127 active")
    assert seen[0].method == "PUT" and seen[0].url.path == "/api/v1/mirrors/5/health"
    assert json.loads(seen[0].content) == {"state": "resyncing", "members": {"11": "active", "13": "resyncing"},
                                           "sync_percent": 42.5, "detail": "md127 active"}


@pytest.mark.parametrize("status,exc", [(403, Forbidden), (422, InvalidInput)])
def test_ep_health_report_refused(status: int, exc: type[Exception]) -> None:
    c, _ = client(lambda req: httpx.Response(status, json={"detail": "not yours"}))
    with pytest.raises(exc, match="not yours"):
        c.report_mirror_health(5, "clean", {"11": "active"})


def test_gp_release_mirror_deletes() -> None:
    c, seen = client(lambda req: httpx.Response(200, json={"id": 5, "members": []}))
    assert c.release_mirror(5) == {"id": 5, "members": []}
    assert seen[0].method == "DELETE" and seen[0].url.path == "/api/v1/mirrors/5"
