"""A reader of the station's event stream (`GET /api/v1/events`, Server-Sent Events) in a thread,
for the lab and the tests: every event kept as (event, id, data)."""

import json
import threading
import time
from typing import Any

import httpx


class Stream:
    """`GET /api/v1/events` read in a thread: every event as (event, id, data)."""

    def __init__(self, station: Any, headers: dict[str, str]):
        url = station.url
        self.events: list[tuple[str, str | None, dict[str, Any]]] = []
        self.status = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(station.url, headers), daemon=True)
        self._t.start()
        deadline = time.monotonic() + 10
        while not self.status and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.status:
            raise TimeoutError(f"{url}/api/v1/events did not answer in 10 s")

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            self._read(url, headers)
        except httpx.HTTPError:       # the station went away (a test kills it, or the fixture)
            pass

    def _read(self, url: str, headers: dict[str, str]) -> None:
        with httpx.stream("GET", url + "/api/v1/events", headers=headers, timeout=None) as r:
            self.status = r.status_code
            kind, eid = "message", None
            for line in r.iter_lines():
                if self._stop.is_set():
                    return
                if line.startswith("event:"):
                    kind = line[6:].strip()
                elif line.startswith("id:"):
                    eid = line[3:].strip()
                elif line.startswith("data:"):
                    self.events.append((kind, eid, json.loads(line[5:])))
                elif not line:
                    kind, eid = "message", None

    def tasks(self, **match: Any) -> list[dict[str, Any]]:
        return [d for k, _, d in list(self.events) if k == "task"
                and all(d.get(f) == v for f, v in match.items())]

    def close(self) -> None:
        self._stop.set()
