"""A pytest plugin for mutation runs (scripts/mutation.sh loads it with `-p`): the station and
agent processes that component tests start run the mutated code, and their calls count.

mutmut 3 copies the tree to mutants/ and runs pytest there; each mutated function is a trampoline
that picks the mutant named by MUTANT_UNDER_TEST. A child process inherits that variable, but:

1. it must import the copy in mutants/, not the editable install of the tree: PYTHONPATH says so;
2. in mutmut's first pass ("stats", which records which tests reach which functions) the hits of a
   child land in the child's memory. mutmut_site/sitecustomize.py writes them to a file when the
   child exits, and this plugin hands them to mutmut under the test that started the child.
   Without this every mutant reached only through a station process would be "no tests".
"""

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

HITS = "DVSAN_MUTMUT_HITS"
SITE = Path(__file__).parent / "mutmut_site"


def pytest_configure(config: pytest.Config) -> None:
    here = Path.cwd()
    if here.name != "mutants":
        return                      # not under mutmut: nothing to do
    path = [str(here), str(SITE), *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    if HITS not in os.environ:
        os.environ[HITS] = tempfile.mkdtemp(prefix="dvsan-mutmut-hits-")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    # NOTE: after the fixtures' teardown (the station has stopped and written its hits), and after
    # mutmut's own collector: the child's hits are added to this test by hand, as mutmut does.
    yield
    where = os.environ.get(HITS)
    if os.environ.get("MUTANT_UNDER_TEST") != "stats" or not where:
        return
    from mutmut.state import state  # only under mutmut

    test = item.nodeid.removeprefix("mutants/")
    for f in sorted(Path(where).glob("*.json")):
        data = json.loads(f.read_text())
        f.unlink()
        for name in data["hits"]:
            state().tests_by_mangled_function_name[name].add(test)
        for name, callers in data["deps"].items():
            state().function_dependencies[name].update(callers)
