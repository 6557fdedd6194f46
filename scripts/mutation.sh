#!/bin/bash
# Mutation testing (mutmut 3) of the modules that guard data, over the fast tiers (docs/testing.md).
#
#   scripts/mutation.sh [module ...]
#   scripts/mutation.sh --report [module ...]   only print what the last run found (mutants/)
#
# module: a path (station/services/pool.py) or a dotted name (station.services.pool) among [tool.mutmut] only_mutate
# in pyproject.toml; none given: all of them. For each module it prints the mutants made, killed,
# survived, timed out and without tests, the score, the minutes it took, and the diff of every
# mutant that was not killed (`mutmut show`).
#
# Environment: MUTATION_JOBS  parallel mutants (default 2; the machine has 2 cores)
#              MUTATION_KEEP=1  reuse mutants/ and its results (default: a fresh copy of the tree,
#                               since mutmut never refreshes a copied file that it does not mutate)
# Each mutant runs only the tests that reach the mutated function, fastest first, stopping at the
# first failure. Component tests start the real station as a child process:
# tests/component/mutmut_bridge.py makes that child run the mutant and count in the test selection.
set -euo pipefail

REPO=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
cd "$REPO"
MUTMUT="$REPO/.venv/bin/mutmut"
PY="$REPO/.venv/bin/python"
JOBS=${MUTATION_JOBS:-2}
[ -x "$MUTMUT" ] || { echo "mutation.sh: $MUTMUT missing: bash scripts/install-deps.sh" >&2; exit 2; }

mapfile -t ALL < <("$PY" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["tool"]["mutmut"]["only_mutate"], sep="\n")')
REPORT=0
if [ "${1:-}" = --report ]; then REPORT=1; shift; fi
[ $# -gt 0 ] || set -- "${ALL[@]}"
modules=()
for arg in "$@"; do
  path=${arg%.py}; path=${path//./\/}.py
  if [[ " ${ALL[*]} " != *" $path "* ]]; then
    echo "mutation.sh: $arg is not one of the mutated modules (pyproject.toml [tool.mutmut] only_mutate):" >&2
    printf '  %s\n' "${ALL[@]}" >&2
    exit 2
  fi
  modules+=("$path")
done

if [ "$REPORT" = 0 ] && [ "${MUTATION_KEEP:-0}" != 1 ]; then
  rm -rf mutants
fi
mkdir -p mutants/.logs
[ "$REPORT" = 1 ] || : > mutants/.logs/minutes
touch mutants/.logs/minutes

for path in "${modules[@]}"; do
  [ "$REPORT" = 0 ] || break
  mod=${path%.py}; mod=${mod//\//.}
  echo "== $mod: running (log: mutants/.logs/$mod.log)"
  t0=$(date +%s)
  # NOTE: mutmut exits 0 whatever the mutants did; a failure here is of the setup (clean run).
  if ! nice -n 10 "$MUTMUT" run --max-children "$JOBS" "$mod.*" > "mutants/.logs/$mod.log" 2>&1; then
    echo "mutation.sh: mutmut failed for $mod; the end of its log:" >&2
    tail -30 "mutants/.logs/$mod.log" >&2
    exit 1
  fi
  echo "$mod $(( $(date +%s) - t0 ))" >> mutants/.logs/minutes
done

"$PY" - "${modules[@]}" <<'EOF'
"""Per-module counts from mutmut's results (mutants/<path>.meta), and the diffs of the survivors."""
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mutmut.stats import status_by_exit_code

secs = dict(line.split() for line in Path("mutants/.logs/minutes").read_text().splitlines())
stats = json.loads(Path("mutants/mutmut-stats.json").read_text())
print(f"\n(mutmut's stats pass, once for all modules: {stats.get('stats_time', 0) / 60:.1f} CPU minutes,"
      " counted in the first module's minutes)")
rows, left = [], []
for path in sys.argv[1:]:
    mod = path[:-3].replace("/", ".")
    if not Path(f"mutants/{path}.meta").exists():
        print(f"{mod}: not run")
        continue
    meta = json.loads(Path(f"mutants/{path}.meta").read_text())
    codes = {k: v for k, v in meta["exit_code_by_key"].items() if k.startswith(mod + ".")}
    c = Counter(status_by_exit_code[v] for v in codes.values())
    if c["not checked"] == len(codes):
        print(f"{mod}: not run")
        continue
    made = len(codes)
    score = 100 * c["killed"] / made if made else 100.0
    rows.append((mod, made, c["killed"], c["survived"], c["timeout"], c["no tests"],
                 made - sum(c[s] for s in ("killed", "survived", "timeout", "no tests")),
                 score, int(secs.get(mod, 0)) / 60))
    left += sorted(k for k, v in codes.items() if status_by_exit_code[v] not in ("killed", "not checked"))
print(f"\n{'module':32} {'made':>5} {'killed':>6} {'surv.':>5} {'t/out':>5} {'no test':>7} {'other':>5}"
      f" {'score':>6} {'min':>5}")
for r in rows:
    print(f"{r[0]:32} {r[1]:5} {r[2]:6} {r[3]:5} {r[4]:5} {r[5]:7} {r[6]:5} {r[7]:5.1f}% {r[8]:5.1f}")
print(f"\n{len(left)} mutants not killed" + (":" if left else "."))
for name in left:
    out = subprocess.run([str(Path(sys.executable).parent / "mutmut"), "show", name],
                         capture_output=True, text=True)
    print(out.stdout.rstrip() or out.stderr.rstrip())
EOF
