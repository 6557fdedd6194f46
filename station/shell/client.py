"""The shell's REST client of the station (httpx): a timeout on every call, the station's own
error messages, one clear line when the station cannot be reached, and tasks followed to their end."""

import ssl
import time
from collections.abc import Callable
from typing import Any

import httpx

from station.shell.errors import LoginNeeded, Refused, ShellError, TaskFailed, Unreachable

API = "/api/v1"
FINAL = ("succeeded", "failed", "cancelled", "interrupted")
Progress = Callable[[dict[str, Any]], None]


def tls_verify(ca_file: str | None) -> ssl.SSLContext | bool:
    """How to check the station's certificate: against `ca_file`, else the system's CAs."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


def error_text(status: int, body: Any, fallback: str) -> tuple[str, str | None]:
    """The station's message and error kind out of an error answer: `{"detail": str, "error":
    kind}`, or FastAPI's list of refused fields (each as `field: why`)."""
    if not isinstance(body, dict) or "detail" not in body:
        return (fallback.strip() or f"HTTP {status}"), None
    detail = body["detail"]
    if isinstance(detail, list):
        parts = []
        for d in detail:
            if isinstance(d, dict):
                loc = [str(x) for x in d.get("loc", []) if x not in ("body", "query", "path")]
                parts.append(f"{'.'.join(loc) or 'request'}: {d.get('msg', '')}")
            else:
                parts.append(str(d))
        detail = "; ".join(parts)
    kind = body.get("error")
    return str(detail), (str(kind) if kind else None)


def route_missing(r: httpx.Response) -> bool:
    """A 404 of the framework (no such route on this station), not the station's own "no such
    object" (which names its kind of error)."""
    if r.status_code not in (404, 405):
        return False
    try:
        body = r.json()
    except ValueError:
        return True
    return not (isinstance(body, dict) and body.get("error"))


class RouteMissing(Exception):
    """The station has no such route (an older station): the caller falls back or says so."""


class Client:
    """One station, one token. Every call has a timeout; errors become ShellError subclasses."""

    def __init__(self, station: str, token: str | None, *, timeout: float = 10.0,
                 ca_file: str | None = None, transport: httpx.BaseTransport | None = None) -> None:
        self.station = station.rstrip("/")
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.station, headers=headers, verify=tls_verify(ca_file),
                                  timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def send(self, method: str, path: str, *, wait: float = 0.0, **kw: Any) -> httpx.Response:
        """One call; `wait`: seconds the station may hold the answer, added to the timeout."""
        timeout = httpx.Timeout(self.timeout + wait, connect=min(self.timeout, 5.0))
        try:
            r = self._http.request(method, path, timeout=timeout, **kw)
        except httpx.TimeoutException:
            raise Unreachable(f"the station at {self.station} did not answer within "
                              f"{self.timeout + wait:g} s ({method} {path})") from None
        except httpx.ConnectError as e:
            why = str(e) or type(e).__name__
            if "CERTIFICATE_VERIFY_FAILED" in why:
                why += " (give the station's CA with --ca-file)"
            raise Unreachable(f"cannot reach the station at {self.station}: {why}") from None
        except httpx.HTTPError as e:
            raise Unreachable(f"cannot talk to the station at {self.station}: "
                              f"{str(e) or type(e).__name__}") from None
        return r

    def call(self, method: str, path: str, *, wait: float = 0.0, missing_ok: bool = False,
             **kw: Any) -> Any:
        """The JSON answer of a call under /api/v1 (None for 204); Refused with the station's
        message otherwise. `missing_ok`: RouteMissing when the station lacks the route."""
        r = self.send(method, API + path, wait=wait, **kw)
        if r.status_code >= 400:
            if missing_ok and route_missing(r):
                raise RouteMissing(f"{method} {API}{path}")
            self.raise_for(r)
        if r.status_code == 204 or not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise Refused(r.status_code, f"the station answered something that is not JSON: "
                                         f"{r.text[:200]!r}") from None

    def raise_for(self, r: httpx.Response) -> None:
        try:
            body = r.json()
        except ValueError:
            body = None
        detail, kind = error_text(r.status_code, body, r.text[:300])
        if r.status_code == 401:
            raise LoginNeeded(f"the station refused the stored token ({detail}): it has expired or "
                              "been revoked; run `dvsan-shell login` again")
        raise Refused(r.status_code, detail, kind)

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def health(self) -> dict[str, Any]:
        r = self.send("GET", "/healthz")
        if r.status_code != 200:
            self.raise_for(r)
        return r.json()  # type: ignore[no-any-return]

    # -- tasks ---------------------------------------------------------------------------------

    def follow(self, task: dict[str, Any], progress: Progress | None = None,
               deadline: float | None = None, poll: float = 1.0) -> dict[str, Any]:
        """Follow a task to its end, calling `progress` with each new view; the ended task if it
        succeeded, TaskFailed otherwise; ShellError past `deadline` (monotonic) with where to
        follow it. Each poll asks the station to hold its answer up to `poll` seconds, so an
        ending task is seen at once and a running one reports its progress."""
        last: tuple[Any, ...] | None = None
        while True:
            key = (task["state"], task["step"], task["message"])
            if key != last and progress is not None:
                progress(task)
            last = key
            if task["state"] in FINAL:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise ShellError(f"task {task['id']} ({task['kind']} {task['object']}) has not ended "
                                  f"yet: {task['state']}, {task['message']}; it goes on at the station: "
                                  f"follow it with `dvsan-shell /tasks/{task['id']} wait`")
            task = self.call("GET", f"/tasks/{task['id']}", params={"wait": poll}, wait=poll)
        if task["state"] != "succeeded":
            raise TaskFailed(task)
        return task
