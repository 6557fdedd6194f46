"""Imported at start by the processes a mutation run's tests start (tests/component/mutmut_bridge.py
puts this directory on PYTHONPATH): in mutmut's stats pass, write this process's trampoline hits to
a file at exit, for the test process to hand to mutmut."""

import atexit
import json
import os


def _dump() -> None:
    try:
        from mutmut.state import state
    except ImportError:
        return
    st = state()
    data = {"hits": sorted(st._stats),
            "deps": {k: sorted(v) for k, v in st.function_dependencies.items()}}
    path = os.path.join(os.environ["DVSAN_MUTMUT_HITS"], f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(data, f)
    os.replace(path + ".tmp", path)


if os.environ.get("MUTANT_UNDER_TEST") == "stats" and os.environ.get("DVSAN_MUTMUT_HITS"):
    atexit.register(_dump)
