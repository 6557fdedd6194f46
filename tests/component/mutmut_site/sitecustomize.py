"""Imported at start by the processes a mutation run's tests start (tests/component/mutmut_bridge.py
puts this directory on PYTHONPATH): in mutmut's stats pass, write this process's trampoline hits to
a file when it ends, for the test process to hand to mutmut."""

import atexit
import json
import os
import signal
from typing import Any


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


def _on_term(signum: int, _frame: Any) -> None:
    _dump()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)          # end as SIGTERM would have


if os.environ.get("MUTANT_UNDER_TEST") == "stats" and os.environ.get("DVSAN_MUTMUT_HITS"):
    atexit.register(_dump)
    # NOTE: uvicorn ends a SIGTERMed server by raising the signal again once it has shut down,
    # with the handler it found at start: this one, so the hits are written before the process
    # goes (atexit alone never runs then).
    signal.signal(signal.SIGTERM, _on_term)
