"""How long dvsan-shell takes to start, and to `ls /volumes` with 1,000 volumes in the pool.

A real `dvsan-station` on loopback whose database is seeded with one unit and N volumes (rows
written straight into its SQLite file, as the unit's reports would have made them), a real
`dvsan-shell login`, then, each measured R times (median and worst):

- interactive start: from spawning `dvsan-shell` (on a pseudo-terminal) to its first prompt;
- `ls /volumes` in that interactive shell: from Enter to the next prompt (the first visit, and
  again: each `ls` asks the station afresh);
- one-shot `dvsan-shell /volumes ls` and `dvsan-shell /volumes/ID info`: the whole process.

    cd bench && ../.venv/bin/python shell_start.py [--volumes 1000] [--repeat 5]
"""

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pexpect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sim import auth, station

from station.db import Database
from station.db.tables import UnitRow, VolumeRow

REPO = Path(__file__).resolve().parents[1]
SHELL = str(REPO / ".venv" / "bin" / "dvsan-shell")
PROMPT = "dvsan:/> "


def seed(data_dir: str, n: int) -> None:
    """One unit, `n` volumes of 4 MiB on two disks, straight into the station's database."""
    db = Database(f"sqlite:///{Path(data_dir) / 'station.db'}")
    now = datetime.now(UTC)
    with db.session() as s:
        s.add(UnitRow(name="unit-bench", control_host="127.0.0.1", control_port=7479,
                      portal_address="127.0.0.1", portal_port=3260, agent_version="bench",
                      state="online", last_seen=now))
        start = 2048
        for i in range(1, n + 1):
            disk = "sdb" if i <= n // 2 else "sdc"
            s.add(VolumeRow(unit_name="unit-bench", device=f"{disk}{i}", disk=disk, number=i,
                            start_lba=start, length_blocks=8192, end_lba=start + 8191, block_size=512,
                            size_bytes=8192 * 512, state="online", updated_at=now))
            start += 8192
    db.dispose()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(fn: object, repeat: int) -> tuple[list[float], list[float]]:
    """Wall time of each run, and the CPU time of the processes it ran (the shell's own)."""
    wall, cpu = [], []
    for _ in range(repeat):
        c, t = children_cpu(), time.perf_counter()
        fn()  # type: ignore[operator]
        wall.append(time.perf_counter() - t)
        cpu.append(children_cpu() - c)
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dvsan-shell-bench-") as d, station(d) as (url, _udp, _key):
        seed(d, a.volumes)
        env = {**os.environ, "DVSAN_SHELL_CONFIG": str(Path(d) / "shell.json"), "TERM": "dumb"}
        subprocess.run([SHELL, "login", "--station", url, "--user", "admin", "--password-file",
                        str(Path(d) / "admin.password")], env=env, check=True, capture_output=True)

        def run(*args: str) -> None:
            r = subprocess.run([SHELL, *args], check=False, env=env, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stderr

        n = len(subprocess.run([SHELL, "/volumes", "ls", "--json"], env=env, capture_output=True,
                               text=True, check=True).stdout.split('"id"')) - 1
        assert n == a.volumes, f"the shell lists {n} volumes, not {a.volumes}"

        starts: list[float] = []
        first_ls: list[float] = []
        again_ls: list[float] = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            c = pexpect.spawn(SHELL, env=env, encoding="utf-8", timeout=60, dimensions=(50, 120))
            c.expect_exact(PROMPT)
            starts.append(time.perf_counter() - t)
            for bucket in (first_ls, again_ls):
                t = time.perf_counter()
                c.sendline("ls /volumes")
                c.expect_exact(PROMPT)
                bucket.append(time.perf_counter() - t)
            c.sendline("exit")
            c.expect(pexpect.EOF)
        one_ls = timed(lambda: run("/volumes", "ls"), a.repeat)
        one_info = timed(lambda: run(f"/volumes/{a.volumes // 2}", "info"), a.repeat)
        one_units = timed(lambda: run("/units", "ls"), a.repeat)
        one_help = timed(lambda: run("help"), a.repeat)
        with httpx.Client(base_url=url, headers=auth(d), timeout=60) as h:
            rest = timed(lambda: h.get("/api/v1/volumes").raise_for_status(), a.repeat)[0]

        def show(what: str, xs: list[float], cpu: list[float] | None = None) -> None:
            line = f"{what:<56} median {statistics.median(xs) * 1000:6.0f} ms  worst {max(xs) * 1000:6.0f} ms"
            if cpu:
                line += f"  (shell CPU {statistics.median(cpu) * 1000:4.0f} ms)"
            print(line)

        print(f"dvsan-shell against a station on loopback, {a.volumes} volumes, {a.repeat} runs each; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        show("interactive start (spawn to first prompt)", starts)
        show("ls /volumes in the shell, first visit", first_ls)
        show("ls /volumes in the shell, again (asked afresh)", again_ls)
        show("the REST call alone: GET /api/v1/volumes (httpx)", rest)
        show("one-shot `dvsan-shell /volumes ls`", *one_ls)
        show(f"one-shot `dvsan-shell /volumes/{a.volumes // 2} info`", *one_info)
        show("one-shot `dvsan-shell /units ls`", *one_units)
        show("one-shot `dvsan-shell help` (no call to the station)", *one_help)


if __name__ == "__main__":
    main()
