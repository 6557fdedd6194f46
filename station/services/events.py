"""The station's event stream: what changed (tasks, for now), to every subscriber that may see it.

One bus per station process, used from the event loop only. Each subscriber has a bounded queue:
a subscriber that does not keep up loses events rather than slowing the station or growing its
memory, and is told so once (an event of kind `lagged`: re-read `GET /api/v1/tasks`). A short
backlog lets a client that reconnects with `Last-Event-ID` get what it missed.
"""

import asyncio
import itertools
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    """One change: its number (per station run), kind, body, and whose it is (None: staff only)."""

    id: int
    kind: str
    data: dict[str, Any]
    host: str | None = None


Visible = Callable[[Event], bool]


@dataclass(eq=False)
class _Subscriber:
    visible: Visible
    queue: asyncio.Queue[Event]
    lagged: bool = False
    dropped: int = field(default=0)


class EventBus:
    def __init__(self, backlog: int = 1000, queue_size: int = 1000):
        self._ids = itertools.count(1)
        self._subs: set[_Subscriber] = set()
        self._backlog: deque[Event] = deque(maxlen=backlog)
        self.queue_size = queue_size

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, kind: str, data: dict[str, Any], host: str | None = None) -> Event:
        ev = Event(next(self._ids), kind, data, host)
        self._backlog.append(ev)
        for sub in self._subs:
            if not sub.visible(ev):
                continue
            try:
                sub.queue.put_nowait(ev)
            except asyncio.QueueFull:
                sub.lagged, sub.dropped = True, sub.dropped + 1
        return ev

    async def subscribe(self, visible: Visible, last_id: int | None = None,
                        heartbeat: float | None = None) -> AsyncIterator[Event]:
        """Events `visible` lets through, from after `last_id` (what the backlog still has).

        With `heartbeat`, yields an Event of kind `idle` (id 0) after that many quiet seconds,
        so the caller notices a client that went away.
        """
        sub = _Subscriber(visible, asyncio.Queue(self.queue_size))
        self._subs.add(sub)
        try:
            if last_id is not None:
                for ev in list(self._backlog):
                    if ev.id > last_id and visible(ev):
                        yield ev
            while True:
                if sub.lagged:
                    sub.lagged = False
                    yield Event(0, "lagged", {"dropped": sub.dropped,
                                              "detail": "events were dropped for this slow client: "
                                                        "re-read GET /api/v1/tasks"})
                try:
                    ev = await asyncio.wait_for(sub.queue.get(), heartbeat)
                except TimeoutError:
                    yield Event(0, "idle", {})
                    continue
                yield ev
        finally:
            self._subs.discard(sub)
