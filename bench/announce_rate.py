"""Benchmark: how fast the real station takes startup announcements from many simulated units.

Starts a real `dvsan-station` (SQLite file, loopback), then N simulated units (the real UnitAgent
protocol loop with an in-memory LIO, 3 partitions each) announce themselves in waves. Prints the
rate at which units reach the pool (STARTUP -> NEED_STORAGE_INFO -> STORAGE_INFO -> pool ->
EXPORTS) and how many were lost. Usage: python bench/announce_rate.py [--units 400] [--wave 50]
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim import NullLio, auth, parts, station

from dvsan.identity import Signer, StationPin, generate
from unit_agent.agent import UnitAgent


async def run(n: int, wave: int, url: str, udp: int, key: bytes, headers: dict[str, str]) -> tuple[float, int]:
    inv = parts()
    # each simulated unit has its own key (enrolled first-come) and pins the station's on first contact
    agents = [UnitAgent(f"sim-{i:05d}", key, ("127.0.0.1", udp), "127.0.0.1", 3260, NullLio(), lambda: inv,
                        signer=Signer(f"sim-{i:05d}", generate()), station_pin=StationPin(None, first_contact=True))
              for i in range(n)]
    for a in agents:
        await a.open("127.0.0.1", 0)
    t0 = time.perf_counter()
    for i in range(0, n, wave):
        await asyncio.gather(*(a.announce() for a in agents[i:i + wave]))
    async with httpx.AsyncClient(timeout=30, headers=headers) as http:
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            vols = (await http.get(url + "/api/v1/volumes", params={"state": "online"})).json()
            if len(vols) >= 3 * n:
                break
            await asyncio.sleep(0.05)
    took = time.perf_counter() - t0
    for a in agents:
        a.endpoint.close()  # type: ignore[union-attr]
    return took, n - len({v["unit_name"] for v in vols})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=400)
    ap.add_argument("--wave", type=int, default=50, help="units announcing at the same time")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, station(tmp) as (url, udp, key):
        took, lost = asyncio.run(run(args.units, args.wave, url, udp, key, auth(tmp)))
        stats = httpx.get(url + "/api/v1/protocol/stats", headers=auth(tmp)).json()
    print(f"units announced          {args.units} (waves of {args.wave}, 3 partitions each)")
    print(f"time to all in the pool  {took:.2f} s")
    print(f"units per second         {args.units / took:.1f}")
    print(f"units lost               {lost}")
    print(f"station retransmits      {stats.get('retransmits', 0)}; datagrams dropped {stats.get('dropped', 0)}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
