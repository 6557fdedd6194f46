"""The ownership rules of docs/architecture.md, read from the code's own imports (ast, no import runs):
the core imports no adapter; only unit_agent/lio.py imports rtslib; only host_agent/iscsiadm.py runs
iscsiadm; the protocol listeners import no web framework; console and shell code reach the station
through its REST API only, never its database."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("dvsan", "station", "unit_agent", "host_agent")
ADAPTERS = {"rtslib", "rtslib_fb", "pysnmp", "pyasn1", "fastapi", "starlette", "sqlalchemy", "alembic",
            "subprocess", "uvicorn", "httpx", "pyroute2", "configshell", "configshell_fb"}
WEB = {"fastapi", "starlette", "uvicorn"}
DATABASE = {"sqlalchemy", "alembic", "station.db", "station.services"}


def imports(source: str) -> set[str]:
    """Every module a source imports, dotted, at any depth of the file (functions too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def hits(mods: set[str], banned: set[str]) -> set[str]:
    return {m for m in mods if any(m == b or m.startswith(b + ".") for b in banned)}


def runs_iscsiadm(source: str) -> bool:
    """A string constant naming the iscsiadm program (prose in docstrings does not count)."""
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str)
               and (n.value == "iscsiadm" or n.value.endswith("/iscsiadm"))
               for n in ast.walk(ast.parse(source)))


def sources(*tops: str) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for t in tops for p in sorted((ROOT / t).rglob("*.py"))}


def test_gp_the_core_imports_no_adapter():
    bad = {f: hits(imports(s), ADAPTERS) for f, s in sources("dvsan").items()}
    assert {f: h for f, h in bad.items() if h} == {}


def test_gp_only_lio_py_imports_rtslib():
    bad = {f for f, s in sources(*PRODUCT).items() if hits(imports(s), {"rtslib", "rtslib_fb"})}
    assert bad <= {"unit_agent/lio.py"}
    assert "unit_agent/lio.py" in bad, "the rule reads nothing: lio.py no longer imports rtslib?"


def test_gp_only_iscsiadm_py_runs_iscsiadm():
    bad = {f for f, s in sources(*PRODUCT).items() if runs_iscsiadm(s)}
    assert bad == {"host_agent/iscsiadm.py"}


def runs_program(source: str, program: str) -> bool:
    """A string constant naming `program` ('mdadm', '/sbin/mdadm'); prose does not count."""
    return any(isinstance(n, ast.Constant) and isinstance(n.value, str)
               and (n.value == program or n.value.endswith("/" + program))
               for n in ast.walk(ast.parse(source)))


def test_gp_only_mdadm_py_runs_mdadm():
    bad = {f for f, s in sources(*PRODUCT).items() if runs_program(s, "mdadm")}
    assert bad == {"host_agent/mdadm.py"}


def test_ep_the_checker_sees_mdadm_run_but_not_named_in_prose():
    assert runs_program('subprocess.run(["mdadm", "--stop", "/dev/md/dvsan-5"])', "mdadm")
    assert runs_program('EXE = "/sbin/mdadm"', "mdadm")
    assert not runs_program('"""mdadm says exit 1."""', "mdadm")


def test_gp_the_protocol_listeners_import_no_web_framework():
    bad = {f: hits(imports(s), WEB) for f, s in sources("station/listeners", "station/services").items()}
    assert {f: h for f, h in bad.items() if h} == {}


def test_gp_console_and_shell_never_touch_the_database():
    bad = {f: hits(imports(s), DATABASE) for f, s in sources("station/console", "station/shell").items()}
    assert {f: h for f, h in bad.items() if h} == {}


@pytest.mark.parametrize(("source", "banned", "found"), [
    ("import rtslib_fb", ADAPTERS, {"rtslib_fb"}),
    ("from rtslib_fb.root import RTSRoot", ADAPTERS, {"rtslib_fb.root", "rtslib_fb.root.RTSRoot"}),
    ("def f():\n    import subprocess\n", ADAPTERS, {"subprocess"}),
    ("from station.db.tables import VolumeRow", DATABASE, {"station.db.tables", "station.db.tables.VolumeRow"}),
    ("from station import db", DATABASE, {"station.db"}),
    ("import fastapi_like", WEB, set()),
    ("from . import lio", ADAPTERS, set()),
])
def test_ep_the_checker_sees_each_kind_of_import(source, banned, found):
    assert hits(imports(source), banned) == found


def test_ep_the_checker_sees_iscsiadm_run_but_not_named_in_prose():
    assert runs_iscsiadm('subprocess.run(["iscsiadm", "-m", "session"])')
    assert runs_iscsiadm('EXE = "/usr/sbin/iscsiadm"')
    assert not runs_iscsiadm('"""iscsiadm says exit 21."""')
