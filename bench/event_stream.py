"""Events per second the station streams to 10 connected consoles while 20 tasks report progress.

The real station on loopback; a simulated unit (the real UnitAgent protocol loop, LIO held in
memory) whose wiper, instead of zeroing, reports WIPE_STATUS every `--report-every` seconds for
`--seconds`. 20 volumes are assigned and released: each release orders a wipe, a `wipe` task that
follows the unit's reports, so 20 tasks report progress at once through the whole path (UDP ->
listener -> database -> task -> event bus -> SSE). 10 clients follow `GET /api/v1/events`.

    cd bench && ../.venv/bin/python event_stream.py [--consoles 10] [--tasks 20] [--seconds 10]
"""

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim import NullLio, auth, station

from dvsan.identity import Signer, StationPin, generate
from dvsan.model import Partition
from dvsan.protocol import MsgType
from unit_agent.agent import UnitAgent

MiB = 1 << 20


class ReportingWiper:
    """Stands in for unit_agent.wipe.Wiper: takes a WIPE and reports progress fast, zeroing nothing."""

    def __init__(self, agent: UnitAgent, every: float, seconds: float):
        self.agent, self.every, self.seconds = agent, every, seconds
        self.sent = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def handle(self, mtype: MsgType, body: dict[str, Any]) -> dict[str, Any]:
        if mtype != MsgType.WIPE:
            return {"status": "not-running", "reason": "bench"}
        ext = body["extent"]
        size = ext["length_blocks"] * ext["block_size"]
        t = asyncio.ensure_future(self._run(body["device"], body["wipe_id"], size))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return {"status": "accepted", "wipe_id": body["wipe_id"], "done_bytes": 0, "total_bytes": size,
                "method": "zeroout"}

    async def _run(self, device: str, wipe_id: str, size: int) -> None:
        assert self.agent.endpoint is not None
        steps = max(1, int(self.seconds / self.every))
        t0 = time.monotonic()
        base = {"unit": self.agent.name, "device": device, "wipe_id": wipe_id, "total_bytes": size,
                "method": "zeroout"}
        for i in range(1, steps):
            await asyncio.sleep(self.every)
            await self.agent.endpoint.send(self.agent.station, MsgType.WIPE_STATUS,
                                           {**base, "state": "running", "done_bytes": size * i // steps,
                                            "elapsed_s": time.monotonic() - t0}, timeout=5)
            self.sent += 1
        await self.agent.endpoint.send(self.agent.station, MsgType.WIPE_STATUS,
                                       {**base, "state": "succeeded", "done_bytes": size,
                                        "elapsed_s": time.monotonic() - t0}, timeout=30)
        self.sent += 1

    def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()


class Console(threading.Thread):
    """One console following the event stream: the arrival time of every task event."""

    def __init__(self, url: str, headers: dict[str, str]):
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.times: list[float] = []
        self.wipe_events = 0
        self.lagged = 0
        self.connected = threading.Event()
        self.client: httpx.Client | None = None

    def run(self) -> None:
        self.client = httpx.Client(timeout=httpx.Timeout(10, read=None))
        try:
            with self.client.stream("GET", self.url + "/api/v1/events", headers=self.headers) as r:
                self.connected.set()
                self.follow(r)
        except httpx.HTTPError:
            pass                  # closed by close(): the run is over

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def follow(self, r: httpx.Response) -> None:
        kind = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and kind == "task":
                self.times.append(time.monotonic())
                if json.loads(line[5:]).get("kind") == "wipe":
                    self.wipe_events += 1
            elif line.startswith("data:") and kind == "lagged":
                self.lagged += 1


def partitions(n: int) -> list[Partition]:
    out, start = [], 2048
    for i in range(1, n + 1):
        out.append(Partition(device=f"sdb{i}", disk="sdb", number=i, start_lba=start, length_blocks=8192,
                             end_lba=start + 8191, block_size=512, size_bytes=8192 * 512))
        start += 8192
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--consoles", type=int, default=10)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0, help="how long each wipe reports progress")
    ap.add_argument("--report-every", type=float, default=0.05, help="seconds between a wipe's reports")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, station(tmp) as (url, udp, key):
        headers = auth(tmp)
        inv = partitions(args.tasks)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        agent = UnitAgent("unit-bench", key, ("127.0.0.1", udp), "127.0.0.1", 3260, NullLio(), lambda: inv,
                          signer=Signer("unit-bench", generate()), station_pin=StationPin(None, first_contact=True))
        wiper = ReportingWiper(agent, args.report_every, args.seconds)
        agent.wiper = wiper  # type: ignore[assignment]
        asyncio.run_coroutine_threadsafe(agent.open("127.0.0.1", 0), loop).result(10)
        asyncio.run_coroutine_threadsafe(agent.announce(), loop).result(30)
        # NOTE: heartbeats keep the unit online (a silent one goes unreachable and fails its wipes)
        asyncio.run_coroutine_threadsafe(agent.heartbeat(2.0), loop)
        with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
            while len(c.get("/api/v1/volumes", params={"state": "online"}).json()) < len(inv):
                time.sleep(0.1)
            ids = []
            for _ in inv:
                r = c.post("/api/v1/assignments?wait=60", json={
                    "host": "host-bench", "initiator_iqn": "iqn.2026-11.org.dvsan.bench:host",
                    "host_address": "127.0.0.2", "size": "1M"})
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            consoles = [Console(url, headers) for _ in range(args.consoles)]
            for con in consoles:
                con.start()
            for con in consoles:
                con.connected.wait(10)
            time.sleep(0.5)       # let every stream subscribe before the first event
            t0 = time.monotonic()
            for i in ids:         # each release orders a wipe: a task that follows the unit's reports
                r = c.delete(f"/api/v1/assignments/{i}?wait=60")
                assert r.status_code == 200, r.text
            deadline = time.monotonic() + args.seconds * 3 + 300
            while time.monotonic() < deadline:
                running = c.get("/api/v1/tasks", params={"kind": "wipe", "limit": 1000}).json()
                if len(running) >= len(ids) and all(t["state"] == "succeeded" for t in running):
                    break
                time.sleep(0.2)
            else:
                print("not every wipe task ended in time", file=sys.stderr)
            took = time.monotonic() - t0
            states = [t["state"] for t in c.get("/api/v1/tasks", params={"kind": "wipe", "limit": 1000}).json()]
            time.sleep(0.5)
            for con in consoles:
                con.close()
            for con in consoles:
                con.join(10)
    per = [len(con.times) for con in consoles]
    spans = [con.times[-1] - con.times[0] for con in consoles if len(con.times) > 1]
    rates = [n / s for n, s in zip(per, spans, strict=False) if s > 0]
    print(f"{args.tasks} wipe tasks reporting every {args.report_every * 1000:.0f} ms for {args.seconds:g} s "
          f"each, {args.consoles} consoles on GET /api/v1/events")
    print(f"unit progress reports sent: {wiper.sent} in {took:.1f} s = {wiper.sent / took:.0f} per second")
    print(f"task events per console: median {statistics.median(per):.0f} (min {min(per)}, max {max(per)}); "
          f"wipe-task events {statistics.median([con.wipe_events for con in consoles]):.0f}")
    print(f"events per second per console: median {statistics.median(rates):.0f}; "
          f"streamed in all: {sum(per) / took:.0f} per second to {args.consoles} consoles")
    print(f"wipe tasks: {len(states)}, {states.count('succeeded')} succeeded")
    print(f"lagged notices (a console fell behind and lost events): {sum(con.lagged for con in consoles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
