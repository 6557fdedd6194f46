"""What authentication costs a REST call, and the allocation rate with it, in one run on loopback.

Authentication cannot be switched off (safe by default), so the comparison is made where it can be:
the same read route answered to a token (`GET /api/v1/units`: token lookup + a query) and refused
to a bad one (401: the lookup alone) against the health check that needs neither (`GET /healthz`),
and N sequential allocations (`POST /api/v1/assignments` with a host token, each confirmed by a
simulated unit) as the rate the station sustains with authentication and the audit log on.

    cd bench && ../.venv/bin/python auth_cost.py [--calls 300] [--allocations 100]
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim import NullLio, auth, station

from dvsan.identity import Signer, StationPin, generate
from dvsan.model import Partition
from unit_agent.agent import UnitAgent


def many(n: int) -> list[Partition]:
    out, start = [], 2048
    for i in range(1, n + 1):
        out.append(Partition(device=f"sdb{i}", disk="sdb", number=i, start_lba=start, length_blocks=8192,
                             end_lba=start + 8191, block_size=512, size_bytes=8192 * 512))
        start += 8192
    return out


def timed(fn, n: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--allocations", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, station(tmp) as (url, udp, key):
        headers = auth(tmp)
        inv = many(args.allocations)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, daemon=True).start()
        agent = UnitAgent("unit-bench", key, ("127.0.0.1", udp), "127.0.0.1", 3260, NullLio(), lambda: inv,
                          signer=Signer("unit-bench", generate()), station_pin=StationPin(None, first_contact=True))
        asyncio.run_coroutine_threadsafe(agent.open("127.0.0.1", 0), loop).result(10)
        asyncio.run_coroutine_threadsafe(agent.announce(), loop).result(30)
        with httpx.Client(base_url=url, timeout=60) as c:
            while len(c.get("/api/v1/volumes", headers=headers, params={"state": "online"}).json()) < len(inv):
                time.sleep(0.1)
            host = c.post("/api/v1/hosts", headers=headers, json={
                "name": "host-bench", "initiator_iqns": ["iqn.2026-11.org.dvsan.bench:host"]}).json()
            htoken = {"Authorization": f"Bearer {host['token']['token']}"}
            health = timed(lambda: c.get("/healthz"), args.calls)
            units = timed(lambda: c.get("/api/v1/units", headers=headers), args.calls)
            refused = timed(lambda: c.get("/api/v1/units", headers={"Authorization": "Bearer dvsan_1_x"}),
                            args.calls)
            t0 = time.perf_counter()
            for _ in range(args.allocations):
                r = c.post("/api/v1/assignments?wait=60", headers=htoken, json={
                    "host": "host-bench", "initiator_iqn": "iqn.2026-11.org.dvsan.bench:host",
                    "host_address": "127.0.0.2", "size": "1M"})
                assert r.status_code == 201, r.text
            took = time.perf_counter() - t0
    med = statistics.median
    print(f"GET /healthz (no authentication)         median {med(health) * 1000:6.2f} ms")
    print(f"GET /api/v1/units with a token           median {med(units) * 1000:6.2f} ms  "
          f"(ratio {med(units) / med(health):.2f})")
    print(f"GET /api/v1/units with a bad token (401) median {med(refused) * 1000:6.2f} ms  "
          f"(ratio {med(refused) / med(health):.2f})")
    print(f"allocations with a host token, sequential, each confirmed by the unit: {args.allocations} "
          f"in {took:.2f} s = {args.allocations / took:.1f} per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
