"""Benchmark: time to first paint of the web console's overview and units pages with a large pool.

Starts a real `dvsan-station` (SQLite file, loopback); 100 simulated units (the real UnitAgent
protocol loop, in-memory LIO) announce 10 partitions each (1,000 volumes); 100 tasks are written
through the station's task service functions (80 succeeded, 10 failed, 10 running with progress).
Then Debian's chromium (Playwright) signs in and loads each page `--runs` times, and prints, as
the browser measured them (the Performance API): first contentful paint (the page's shell) and
the time until the page's data is on screen (the script's `dvsan-ready` mark, then a frame).

Usage: python bench/console_paint.py [--units 100] [--per-unit 10] [--tasks 100] [--runs 5]
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim import NullLio, auth, station

from dvsan.identity import Signer, StationPin, generate
from dvsan.model import Partition
from station.db import Database
from station.db.tables import TaskState, utcnow
from station.services import tasks
from station.settings import StationSettings
from unit_agent.agent import UnitAgent

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "bench-admin-password-0"        # bench/sim.py's admin
# the data on screen, then one more frame: what the user sees
READY = """() => new Promise(done => {
  const wait = () => document.body.dataset.ready ? requestAnimationFrame(() => done({
      ready: performance.getEntriesByName('dvsan-ready')[0].startTime, painted: performance.now(),
      fcp: (performance.getEntriesByName('first-contentful-paint')[0] || {startTime: null}).startTime,
      state: document.body.dataset.ready}))
    : setTimeout(wait, 5);
  wait();
})"""


def partitions(n: int) -> list[Partition]:
    """`n` partitions of 64 MiB on disk sdb."""
    out, start = [], 2048
    for i in range(1, n + 1):
        blocks = 64 * 2048
        out.append(Partition(device=f"sdb{i}", disk="sdb", number=i, start_lba=start, length_blocks=blocks,
                             end_lba=start + blocks - 1, block_size=512, size_bytes=blocks * 512))
        start += blocks
    return out


async def announce(units: int, per_unit: int, url: str, udp: int, key: bytes, headers: dict[str, str]) -> int:
    inv = partitions(per_unit)
    agents = [UnitAgent(f"sim-{i:04d}", key, ("127.0.0.1", udp), "127.0.0.1", 3260, NullLio(), lambda: inv,
                        signer=Signer(f"sim-{i:04d}", generate()), station_pin=StationPin(None, first_contact=True))
              for i in range(units)]
    for a in agents:
        await a.open("127.0.0.1", 0)
    for i in range(0, units, 25):
        await asyncio.gather(*(a.announce() for a in agents[i:i + 25]))
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        for _ in range(600):
            n = len((await http.get(url + "/api/v1/volumes", params={"state": "online"})).json())
            if n >= units * per_unit:
                break
            await asyncio.sleep(0.1)
    for a in agents:
        a.endpoint.close()  # type: ignore[union-attr]
    return n


def seed_tasks(data_dir: str, n: int) -> None:
    """`n` tasks written as the task service writes them: most ended, a tenth running."""
    db = Database(StationSettings.model_validate({"data_dir": data_dir}).db_url)
    try:
        with db.session() as s:
            for i in range(n):
                t = tasks.create(s, ("wipe", "assign", "release")[i % 3], f"/volumes/{i + 1}", "user:admin", None)
                t.started_at = utcnow()
                if i % 10 == 0:
                    t.state, t.step, t.total_steps = TaskState.RUNNING, i * 1_000_000, 200_000_000
                    t.message = f"zeroing volume {i + 1}: {i} of 200 MB"
                elif i % 10 == 1:
                    t.state, t.error, t.error_kind, t.finished_at = (TaskState.FAILED, "the unit did not answer",
                                                                     "Unavailable", utcnow())
                else:
                    t.state, t.step, t.message, t.finished_at = TaskState.SUCCEEDED, 1, "succeeded", utcnow()
    finally:
        db.dispose()


def measure(url: str, pages: list[str], runs: int) -> dict[str, list[dict[str, float]]]:
    out: dict[str, list[dict[str, float]]] = {p: [] for p in pages}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        ctx = browser.new_context(viewport={"width": 1280, "height": 800})
        r = ctx.request.post(url + "/api/v1/session", data={"name": "admin", "password": PASSWORD})
        assert r.ok, r.text()
        page = ctx.new_page()
        for name in pages:
            page.goto(f"{url}/console/{name}")                  # warm: caches, the station's first queries
            page.evaluate(READY)
            for _ in range(runs):
                page.goto(f"{url}/console/{name}")
                m = page.evaluate(READY)
                assert m["state"] == "yes", f"the {name} page did not load: {page.inner_text('#notice')}"
                out[name].append(m)
        browser.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=100)
    ap.add_argument("--per-unit", type=int, default=10, help="partitions each unit offers")
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, station(tmp, "--liveness-timeout", "0") as (url, udp, key):
        vols = asyncio.run(announce(args.units, args.per_unit, url, udp, key, auth(tmp)))
        seed_tasks(tmp, args.tasks)
        shown = len(httpx.get(url + "/api/v1/tasks?limit=1000", headers=auth(tmp), timeout=30).json())
        results = measure(url, ["overview", "units"], args.runs)
    print(f"pool                      {vols} volumes on {args.units} units; {shown} tasks")
    for name, ms in results.items():
        fcp = statistics.median(m["fcp"] for m in ms)
        ready = statistics.median(m["painted"] for m in ms)
        print(f"{name:<10} first contentful paint {fcp:6.0f} ms   data on screen {ready:6.0f} ms "
              f"(median of {len(ms)}; worst {max(m['painted'] for m in ms):.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
