"""Benchmark: failures on real kernels, measured in one run of the failure lab.

Runs tests/lab/test_disaster_recovery.py (real guests: LIO units, open-iscsi hosts, md mirrors,
`fio --verify` under every failure) and prints, as a table, the figures each test measures:
how long host I/O stalled (from fio's latency logs), the time from a failure to the station
noticing, the time to replace a mirror member and its resync rate against the raw write rate of
the same run, and the time of a host takeover from the decision to the spare host reading the
data. Figures under emulation on a shared machine: compare them as ratios within one run.

Usage: python bench/failures.py [-k EXPR]    (boots the lab, or uses one that is up with
DVSAN_LAB_REUSE=1; about 15 minutes on 2 cores)
"""

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"^(unit added under I/O|unit reboot under I/O|mirror, unit lost under I/O|host takeover|"
                    r"host reboot|failure lab booted):\s*(.*)$")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-k", help="only the tests matching this pytest expression")
    args = p.parse_args()
    cmd = [sys.executable, "-m", "pytest", str(REPO / "tests/lab/test_disaster_recovery.py"), "-s", "-q",
           "-p", "no:cacheprovider", f"--basetemp={REPO / '.lab' / 'bench-failures'}"]
    if args.k:
        cmd += ["-k", args.k]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ}, check=False)
    rows = [m.groups() for line in proc.stdout.splitlines() if (m := FIGURE.match(line.strip()))]
    width = max((len(r[0]) for r in rows), default=10)
    print(f"{'failure':<{width}}  figures")
    for name, figures in rows:
        for i, part in enumerate(figures.split("; ")):
            print(f"{name if i == 0 else '':<{width}}  {part}")
    tail = proc.stdout.strip().splitlines()[-1:] or ["(no pytest output)"]
    print(f"\npytest: {tail[0]}")
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
