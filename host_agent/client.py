"""The host agent's REST client of the station (httpx)."""

import ssl
import time
from typing import Any

import httpx

from dvsan.errors import (
    Conflict,
    DvsanError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unauthenticated,
    Unavailable,
)

_BY_STATUS: dict[int, type[DvsanError]] = {401: Unauthenticated, 403: Forbidden, 404: NotFound, 409: Conflict,
                                            422: InvalidInput, 503: Unavailable}
_BY_KIND: dict[str, type[DvsanError]] = {c.__name__: c for c in _BY_STATUS.values()} | {
    "InsufficientCapacity": Conflict, "Busy": Conflict}


def tls_verify(ca_file: str | None) -> ssl.SSLContext | bool:
    """How to verify the station's certificate: against `ca_file`, else the system's CAs."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


class StationClient:
    """Talks to one station's REST API; maps its errors back to dvsan exceptions."""

    def __init__(self, base_url: str, timeout: float = 60.0, token: str | None = None,
                 ca_file: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.wait = max(1.0, min(self.WAIT, timeout * 0.8))   # the station answers before we give up
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers,
                                  verify=tls_verify(ca_file))

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._send(method, path, **kw)
        return r.json()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise Unavailable(f"station {self.base_url} unreachable: {e}") from e
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail")
            except ValueError:
                detail = r.text
            if isinstance(detail, list):  # FastAPI validation errors
                detail = "; ".join(f"{'.'.join(str(x) for x in d.get('loc', [])[1:])}: {d.get('msg')}"
                                   for d in detail)
            raise _BY_STATUS.get(r.status_code, DvsanError)(f"station said {r.status_code}: {detail}")
        return r

    def _task(self, method: str, path: str, deadline: float, **kw: Any) -> Any:
        """A long operation: asks the station to wait for its task, and follows the task if it
        has not ended by then (202), until `deadline` (monotonic). Its result, or its error."""
        wait = max(1.0, min(self.wait, deadline - time.monotonic()))
        r = self._send(method, path, params={"wait": wait}, **kw)
        while r.status_code == 202:
            task = r.json()
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"task {task['id']} ({task['kind']} {task['object']}) has not ended "
                                  f"after {self.TASK_TIMEOUT:.0f} s: {task['state']}, {task['message']}; "
                                  f"follow it with GET /api/v1/tasks/{task['id']}")
            t = self._call("GET", f"/api/v1/tasks/{task['id']}", params={"wait": max(1.0, min(self.wait, left))})
            if t["state"] == "succeeded":
                return t
            if t["state"] in ("failed", "cancelled", "interrupted"):
                cls = _BY_KIND.get(t.get("error_kind") or "", DvsanError)
                raise cls(f"station said: task {t['id']} {t['state']}: {t.get('error') or t['message']}")
            r = httpx.Response(202, json=t)
        return r.json()

    WAIT = 50.0             # seconds the station is asked to hold each answer for a task
    TASK_TIMEOUT = 600.0    # how long `request` and `release` follow their task at most

    def request_storage(self, host: str, initiator_iqn: str, host_address: str, size: str,
                        mutual_chap: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"host": host, "initiator_iqn": initiator_iqn, "host_address": host_address,
                                "size": size}
        if mutual_chap:
            body["mutual_chap"] = True
        out = self._task("POST", "/api/v1/assignments", time.monotonic() + self.TASK_TIMEOUT, json=body)
        if "kind" in out:       # a task followed to its end: the assignment it made
            return self._call("GET", f"/api/v1/assignments/{out['result']['assignment']}")  # type: ignore[no-any-return]
        return out  # type: ignore[no-any-return]

    def release(self, assignment_id: int) -> dict[str, Any]:
        out = self._task("DELETE", f"/api/v1/assignments/{assignment_id}", time.monotonic() + self.TASK_TIMEOUT)
        return out["result"] if "kind" in out else out  # type: ignore[no-any-return]

    def assignments(self, host: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/assignments", params={"host": host} if host else None)

    # ---- mirrors (a RAID1 pair of assignments on two units) -----------------------------------
    def request_mirror(self, host: str, initiator_iqn: str, host_address: str, size_bytes: int,
                       mutual_chap: bool = False) -> dict[str, Any]:
        """POST /api/v1/mirrors: two volumes of at least `size_bytes` on two units, exported to
        this host; the MirrorPublic (with its two members)."""
        body: dict[str, Any] = {"host": host, "initiator_iqn": initiator_iqn, "host_address": host_address,
                                "size_bytes": int(size_bytes)}
        if mutual_chap:
            body["mutual_chap"] = True
        out = self._task("POST", "/api/v1/mirrors", time.monotonic() + self.TASK_TIMEOUT, json=body)
        if "kind" in out:       # a task followed to its end: the mirror it made
            res = out.get("result") or {}
            mid = res.get("mirror", res.get("id")) if isinstance(res, dict) else None
            if isinstance(mid, dict):
                mid = mid.get("id")
            if mid is None:
                raise DvsanError(f"station said: task {out.get('id')} ended without naming its mirror: {res!r}")
            return self.mirror(int(mid))
        return out  # type: ignore[no-any-return]

    def mirror(self, mirror_id: int) -> dict[str, Any]:
        return self._call("GET", f"/api/v1/mirrors/{mirror_id}")  # type: ignore[no-any-return]

    def mirrors(self, host: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/mirrors", params={"host": host} if host else None)  # type: ignore[no-any-return]

    def release_mirror(self, mirror_id: int) -> dict[str, Any]:
        """DELETE /api/v1/mirrors/ID: both members go through the normal release."""
        out = self._task("DELETE", f"/api/v1/mirrors/{mirror_id}", time.monotonic() + self.TASK_TIMEOUT)
        return out["result"] if "kind" in out else out  # type: ignore[no-any-return]

    def report_mirror_health(self, mirror_id: int, state: str, members: dict[str, str],
                             sync_percent: float | None = None, detail: str | None = None) -> dict[str, Any]:
        """PUT /api/v1/mirrors/ID/health: the array's state and each member's, as this host sees them."""
        body: dict[str, Any] = {"state": state, "members": members}
        if sync_percent is not None:
            body["sync_percent"] = sync_percent
        if detail is not None:
            body["detail"] = detail[:255]
        return self._call("PUT", f"/api/v1/mirrors/{mirror_id}/health", json=body)  # type: ignore[no-any-return]
