"""The host agent's REST client of the station (httpx)."""

import ssl
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


def tls_verify(ca_file: str | None) -> ssl.SSLContext | bool:
    """How to verify the station's certificate: against `ca_file`, else the system's CAs."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else True


class StationClient:
    """Talks to one station's REST API; maps its errors back to dvsan exceptions."""

    def __init__(self, base_url: str, timeout: float = 60.0, token: str | None = None,
                 ca_file: str | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers,
                                  verify=tls_verify(ca_file))

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
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
        return r.json()

    def request_storage(self, host: str, initiator_iqn: str, host_address: str, size: str) -> dict[str, Any]:
        return self._call("POST", "/api/v1/assignments", json={
            "host": host, "initiator_iqn": initiator_iqn, "host_address": host_address, "size": size})

    def release(self, assignment_id: int) -> dict[str, Any]:
        return self._call("DELETE", f"/api/v1/assignments/{assignment_id}")

    def assignments(self, host: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/api/v1/assignments", params={"host": host} if host else None)
