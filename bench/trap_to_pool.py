"""Benchmark: time from a unit's coldStart trap to its volumes online in the station's pool.

Starts a real `dvsan-station` (SQLite file, loopback) with its SNMP receiver on a free port, then,
for each run, a fresh simulated unit (the real UnitAgent protocol loop, 3 partitions, in-memory
LIO) that announces itself over the signed protocol and whose link then goes down (linkDown trap);
the clock starts just before the sender is asked to send the coldStart (a fresh sender each run,
as at a unit's boot) and stops when GET /api/v1/volumes shows the unit's 3 volumes online again
(trap -> station -> NEED_STORAGE_INFO to the signed control address -> STORAGE_INFO -> pool). Senders: the unit agent's
own notifier (unit_agent/snmp.py, v2c and v3 authPriv) and net-snmp's snmptrap (v2c; its time
includes starting the snmptrap process). Usage: python bench/trap_to_pool.py [--runs 10]
"""

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim import NullLio, auth, free_port, parts, station

from dvsan.identity import Signer, StationPin, generate
from dvsan.traps import MIB_DIR, TrapSecurity, UnitIdentity, UsmUser, engine_id_for
from unit_agent.agent import UnitAgent
from unit_agent.snmp import TrapSender

COMMUNITY = "bench"
USER = UsmUser("bench", "bench-auth-1", "bench-priv-1")


async def one_run(name: str, sender: str, url: str, trap_port: int, key: bytes, udp: int,
                  http: httpx.AsyncClient, env: dict[str, str]) -> tuple[float, float]:
    inv = parts()
    agent = UnitAgent(name, key, ("127.0.0.1", udp), "127.0.0.1", 3260, NullLio(), lambda: inv,
                      signer=Signer(name, generate()), station_pin=StationPin(None, first_contact=True))
    await agent.open("127.0.0.1", 0)
    assert agent.endpoint is not None
    port = agent.endpoint.address[1]
    notifier = None
    if sender != "snmptrap-v2c":
        security = TrapSecurity(user=USER) if sender == "agent-v3" else TrapSecurity(community=COMMUNITY)
        notifier = TrapSender([("127.0.0.1", trap_port)], security,
                              lambda: UnitIdentity(name, "127.0.0.1", 3260, port, "bench"), engine_id_for(name))
    downer = TrapSender([("127.0.0.1", trap_port)], TrapSecurity(community=COMMUNITY),
                        lambda: UnitIdentity(name, "127.0.0.1", 3260, port, "bench"), engine_id_for(name))

    async def volumes_in(state: str) -> bool:
        vols = (await http.get(url + "/api/v1/volumes")).json()
        return sum(v["unit_name"] == name and v["state"] == state for v in vols) == 3

    try:
        # NOTE: a trap never adds a unit (addresses come only from the signed protocol): the
        # unit announces itself, its link goes down, and the timed coldStart brings it back.
        await agent.announce()
        for state, step in (("online", None), ("offline", downer.send_link_down)):
            if step is not None:
                await step()
            for _ in range(15000):
                if await volumes_in(state):
                    break
                await asyncio.sleep(0.002)
        t0 = time.perf_counter()
        if notifier is not None:
            await notifier.send_cold_start()
        else:
            await asyncio.to_thread(subprocess.run, [
                "snmptrap", "-m", "DVSAN-MIB", "-M", f"+{MIB_DIR}", "-v", "2c", "-c", COMMUNITY,
                f"127.0.0.1:{trap_port}", "", "SNMPv2-MIB::coldStart",
                "DVSAN-MIB::dvsanUnitName.0", "s", name, "DVSAN-MIB::dvsanUnitStorageAddress.0", "s", "127.0.0.1",
                "DVSAN-MIB::dvsanUnitControlPort.0", "u", str(port)], check=True, env=env)
        t1 = time.perf_counter()
        deadline = t0 + 30
        while time.perf_counter() < deadline:
            vols = (await http.get(url + "/api/v1/volumes")).json()
            if sum(v["unit_name"] == name and v["state"] == "online" for v in vols) == 3:
                return t1 - t0, time.perf_counter() - t0
            await asyncio.sleep(0.002)
        raise RuntimeError(f"{name}: volumes not online after 30 s")
    finally:
        if notifier is not None:
            await notifier.aclose()
        await downer.aclose()
        agent.endpoint.close()


async def bench(runs: int, url: str, trap_port: int, key: bytes, udp: int, env: dict[str, str],
                headers: dict[str, str]) -> None:
    senders = ["agent-v2c", "agent-v3"] + (["snmptrap-v2c"] if shutil.which("snmptrap") else [])
    async with httpx.AsyncClient(timeout=10, headers=headers) as http:
        for sender in senders:
            times = [await one_run(f"trap-{sender}-{i:03d}", sender, url, trap_port, key, udp, http, env)
                     for i in range(runs)]
            total = sorted(t * 1000 for _, t in times)
            send = statistics.median(s * 1000 for s, _ in times)
            print(f"{sender:13} runs {runs:3}  send started -> 3 volumes online: min {total[0]:6.1f} ms  "
                  f"median {statistics.median(total):6.1f} ms  max {total[-1]:6.1f} ms  "
                  f"(of which sending, median {send:5.1f} ms)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trap = free_port(socket.SOCK_DGRAM)
        env = {**os.environ, "SNMP_PERSISTENT_DIR": tmp}
        files = {}
        for name, value in (("community", COMMUNITY), ("auth", USER.auth_key), ("priv", USER.priv_key)):
            files[name] = Path(tmp, f"{name}.secret")
            files[name].write_text(value + "\n")
            files[name].chmod(0o600)
        with station(tmp, "--trap-host", "127.0.0.1", "--trap-port", str(trap),
                     "--trap-community-file", str(files["community"]), "--trap-v3-user", USER.name,
                     "--trap-v3-auth-key-file", str(files["auth"]),
                     "--trap-v3-priv-key-file", str(files["priv"])) as (url, udp, key):
            asyncio.run(bench(args.runs, url, trap, key, udp, env, auth(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
