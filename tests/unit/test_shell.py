"""dvsan-shell's pure parts: summaries and info pages, error texts, the login file's rules, the
operator's values (sizes, flags, numbers), and the tree's laziness, counted on a fake station
(httpx.MockTransport) that records every call."""

import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from station.shell import config, render
from station.shell.client import Client, error_text, route_missing
from station.shell.errors import (
    LoginNeeded,
    Refused,
    ShellError,
    TaskFailed,
    UsageError,
    error_line,
)
from station.shell.shell import DvsanShell, exit_code
from station.shell.tree import Output, Root, complete, flag, natural, number_arg, size_arg

MiB = 1024**2


def vol(i: int, **kw: Any) -> dict[str, Any]:
    return {"id": i, "unit_name": "unit-a", "device": f"vdb{i}", "disk": "vdb", "number": i,
            "start_lba": 2048 * i, "length_blocks": 2048, "end_lba": 2048 * i + 2047, "block_size": 512,
            "size_bytes": 16 * MiB, "state": "online", "assigned_to": None, "wipe_state": "clean",
            "wipe_done_bytes": 0, "wipe_total_bytes": 0, **kw}


def task(**kw: Any) -> dict[str, Any]:
    return {"id": 7, "kind": "wipe", "object": "/volumes/3", "requested_by": "user:admin", "host": None,
            "state": "running", "step": 8 * MiB, "total_steps": 16 * MiB, "message": "zeroing",
            "result": None, "error": None, "error_kind": None, "created_at": "", "started_at": None,
            "finished_at": None, **kw}


# -- render ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("v", "text"), [
    (vol(1), "unit-a vdb1 16.0 MiB online, free"),
    (vol(2, assigned_to="host-b"), "unit-a vdb2 16.0 MiB online, assigned to host-b"),
    (vol(3, wipe_state="running", wipe_done_bytes=4 * MiB, wipe_total_bytes=16 * MiB),
     "unit-a vdb3 16.0 MiB online, wiping 25%"),
    (vol(4, wipe_state="failed"), "unit-a vdb4 16.0 MiB online, wipe failed"),
    (vol(5, state="offline"), "unit-a vdb5 16.0 MiB offline"),
])
def test_gp_a_volume_summary_says_whether_it_may_be_handed_out(v, text):
    assert render.volume_summary(v) == text


def test_gp_task_lines_show_bytes_for_wipes_and_steps_otherwise():
    assert render.task_line(task()) == "task 7 wipe /volumes/3: running 50% (8.0 MiB of 16.0 MiB): zeroing"
    assert render.task_line(task(kind="assign", object="/hosts/h", step=1, total_steps=2, message="exporting")) \
        == "task 7 assign /hosts/h: running step 1/2: exporting"
    assert render.task_line(task(state="queued", message="queued")) == "task 7 wipe /volumes/3: queued"
    assert render.task_line(task(state="failed", error="unit-a did not confirm")) \
        == "task 7 wipe /volumes/3: failed: unit-a did not confirm"


def test_gp_info_puts_the_important_fields_first_and_sizes_for_people():
    text = render.info(vol(3))
    lines = text.splitlines()
    assert lines[0].split() == ["id", "3"]
    assert lines[1].split() == ["unit_name", "unit-a"]
    assert "size_bytes        16.0 MiB (16777216 bytes)" in text
    assert "assigned_to       -" in text


def test_ep_info_never_prints_a_secret():
    a = {"id": 1, "host": "h", "chap_user": "u", "chap_secret": "s3cret-value", "mutual_secret": "m-value",
         "token": "dvsan_abc"}
    text = render.info(a)
    assert "s3cret-value" not in text and "m-value" not in text and "dvsan_abc" not in text
    assert "chap_user" in text


def test_gp_volumes_grouped_by_disk_count_the_free_ones():
    vols = [vol(1), vol(2, assigned_to="h"), vol(3, disk="vdc", device="vdc1"), vol(4, wipe_state="needed")]
    d = render.disks_of(vols)
    assert set(d) == {"vdb", "vdc"}
    assert (d["vdb"]["volumes"], d["vdb"]["free_volumes"], d["vdb"]["volume_bytes"]) == (3, 1, 48 * MiB)
    assert d["vdb"]["devices"] == ["vdb1", "vdb2", "vdb4"]
    assert render.disk_summary(d["vdc"]) == "1 volume (1 free), 16.0 MiB"


def test_gp_a_disk_the_unit_reported_shows_its_table_and_free_space():
    d = {"name": "vdb", "size_bytes": 2 * 1024**3, "label": "gpt", "system": False,
         "partitions": [{"number": 1}, {"number": 2}], "free": [{"size_bytes": 1024**3}],
         "volumes": 2, "free_volumes": 1}
    assert render.disk_summary(d) == "gpt, 2.0 GiB, 2 partitions, 2 volumes (1 free), 1.0 GiB unpartitioned"
    assert render.disk_summary({**d, "label": None, "partitions": [], "free": [], "volumes": 0, "free_volumes": 0,
                                "system": True}) == "no partition table, 2.0 GiB, 0 partitions, 0 volumes (0 free), system disk"
    p = {"number": 3, "size_bytes": 1024**3, "start_lba": 2048, "end_lba": 2099199, "in_use": ["mounted on /srv"]}
    assert render.partition_summary(p) == \
        "partition 3, 1.0 GiB, LBA 2048-2099199, not in the pool (in use: mounted on /srv)"


def test_gp_dots_fill_the_line_and_never_go_negative():
    line = render.dots("o- ", "volumes", "3 volumes", 40)
    assert len(line) == 40 - 1 and line.startswith("o- volumes .") and line.endswith("[3 volumes]")
    assert render.dots("o- ", "x" * 80, "long", 40).endswith(". [long]")
    assert render.dots("  o- ", "name", "", 40) == "  o- name"


# -- errors and what the station answers -----------------------------------------------------------

@pytest.mark.parametrize(("body", "text", "kind"), [
    ({"detail": "no free volume of at least 1.0 GiB", "error": "InsufficientCapacity"},
     "no free volume of at least 1.0 GiB", "InsufficientCapacity"),
    ({"detail": [{"loc": ["body", "size"], "msg": "not a size"},
                 {"loc": ["query", "wait"], "msg": "too large"}]}, "size: not a size; wait: too large", None),
    ({"detail": "Not Found"}, "Not Found", None),
    (None, "Bad Gateway", None),
    (["odd"], "Bad Gateway", None),
])
def test_gp_the_stations_own_message_is_what_the_operator_reads(body, text, kind):
    assert error_text(502, body, "Bad Gateway") == (text, kind)


def test_gp_a_missing_route_is_told_from_a_missing_object():
    def resp(status: int, body: Any) -> httpx.Response:
        return httpx.Response(status, json=body)
    assert route_missing(resp(404, {"detail": "Not Found"}))                      # the framework's
    assert route_missing(resp(405, {"detail": "Method Not Allowed"}))
    assert not route_missing(resp(404, {"detail": "no volume with id 9", "error": "NotFound"}))
    assert not route_missing(resp(409, {"detail": "Not Found"}))


def test_gp_each_error_has_its_exit_code_and_one_line():
    from configshell import ExecutionError
    assert exit_code(Refused(409, "busy", "Conflict")) == 1
    assert exit_code(TaskFailed(task(state="failed", error="x"))) == 1
    assert exit_code(UsageError("bad")) == 2
    assert exit_code(ExecutionError("No such path /x")) == 2
    assert exit_code(LoginNeeded("no")) == 4
    assert str(Refused(403, "user 'v' lacks the permission 'volumes.wipe'", "Forbidden")) == \
        "refused (403 Forbidden): user 'v' lacks the permission 'volumes.wipe'"
    assert error_line(ExecutionError("No such path /x")) == "no such path /x"
    assert error_line(ShellError("TLS handshake")) == "TLS handshake"


# -- operator's values -------------------------------------------------------------------------------

def test_gp_values_as_operators_type_them():
    assert size_arg("80GiB") == "80GiB" and size_arg("512M") == "512M" and size_arg("1073741824")
    assert flag("yes", "x") and not flag("off", "x") and flag(None, "x", True)
    assert number_arg("17", "volume") == 17
    assert complete(["operator", "viewer"], "op") == ["operator "]
    assert complete(["vdb1", "vdb2"], "vdb") == ["vdb1", "vdb2"]
    assert sorted(["vdb10", "vdb2", "vdb1"], key=natural) == ["vdb1", "vdb2", "vdb10"]


@pytest.mark.parametrize(("call", "words"), [
    (lambda: size_arg("ten gigs"), "not a size"),
    (lambda: size_arg("0"), "must be positive"),
    (lambda: size_arg("-5G"), "not a size"),
    (lambda: flag("maybe", "mutual_chap"), "mutual_chap='maybe': give true or false"),
    (lambda: number_arg("x", "volume"), "give a whole number"),
    (lambda: number_arg("0", "limit"), "at least 1"),
])
def test_ep_bad_values_are_refused_before_anything_is_sent(call, words):
    with pytest.raises(UsageError, match=words):
        call()


# -- the login file -------------------------------------------------------------------------------

def login(**kw: Any) -> config.Login:
    return config.Login(**{"station": "http://127.0.0.1:7480", "user": "alice", "token": "dvsan_x",
                           "token_id": 3, "expires_at": "2999-01-01T00:00:00Z", **kw})


def test_gp_the_login_file_is_written_0600_in_a_0700_directory_and_read_back(tmp_path):
    path = tmp_path / "cfg" / "dvsan" / "shell.json"
    config.save(path, login())
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)
    assert config.load(path) == login()
    config.save(path, login(token="dvsan_y"))              # again: replaced, still 0600
    assert config.load(path).token == "dvsan_y" and path.stat().st_mode & 0o777 == 0o600


def test_gp_the_login_file_path_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(config.ENV, str(tmp_path / "x.json"))
    assert config.default_path() == tmp_path / "x.json"
    monkeypatch.delenv(config.ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config.default_path() == tmp_path / "dvsan" / "shell.json"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_ep_a_login_file_others_may_read_is_refused_but_logout_can_still_read_it(tmp_path, mode):
    path = tmp_path / "shell.json"
    config.save(path, login())
    path.chmod(mode)
    with pytest.raises(LoginNeeded, match=f"group or others may access it \\(mode 0{mode:o}\\)"):
        config.load(path)
    assert config.load(path, strict=False).token == "dvsan_x"


def test_ep_a_login_file_of_another_user_is_refused(tmp_path):
    path = tmp_path / "shell.json"
    config.save(path, login())
    if os.getuid() != 0:
        pytest.skip("only root can give a file away")
    os.chown(path, 4242, 4242)
    with pytest.raises(LoginNeeded, match="belongs to another user"):
        config.load(path)


@pytest.mark.parametrize(("text", "words"), [
    ("not json", "not a dvsan-shell login file"),
    ('{"station": "http://x"}', "not a dvsan-shell login file"),
    ('{"station": "ftp://x", "user": "a", "token": "t"}', "no token or station URL"),
    ('{"station": "http://x", "user": "a", "token": ""}', "no token or station URL"),
])
def test_ep_a_damaged_login_file_says_to_log_in_again(tmp_path, text, words):
    path = tmp_path / "shell.json"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(LoginNeeded, match=words):
        config.load(path)


def test_ep_no_login_file_says_how_to_log_in(tmp_path):
    with pytest.raises(LoginNeeded, match="dvsan-shell login"):
        config.load(tmp_path / "none.json")


def test_gp_expiry_is_judged_locally():
    assert login(expires_at="2000-01-01T00:00:00Z").expired()
    assert not login().expired() and not login(expires_at=None).expired()
    assert not login(expires_at="garbage").expired()        # the station judges that one


# -- the tree, over a fake station that counts calls ---------------------------------------------

class FakeStation:
    """Answers the few routes the tree reads; records every call."""

    def __init__(self, n: int = 1000, volume_route: bool = False,
                 disks: list[dict[str, Any]] | None = None) -> None:
        self.vols = [vol(i) if i <= n // 2 else vol(i, disk="vdc", device=f"vdc{i}") for i in range(1, n + 1)]
        self.volume_route = volume_route
        self.disks = disks                          # None: a station without the disks routes
        self.calls: list[str] = []
        self.bodies: list[Any] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        path = req.url.path
        self.calls.append(f"{req.method} {path}{'?' + req.url.query.decode() if req.url.query else ''}")
        if path == "/api/v1/volumes":
            unit = req.url.params.get("unit")
            return httpx.Response(200, json=[v for v in self.vols if unit in (None, v["unit_name"])])
        if path.startswith("/api/v1/volumes/") and self.volume_route:
            vid = int(path.rsplit("/", 1)[1])
            hit = [v for v in self.vols if v["id"] == vid]
            return (httpx.Response(200, json=hit[0]) if hit else
                    httpx.Response(404, json={"detail": f"no volume with id {vid}", "error": "NotFound"}))
        if req.content:
            self.bodies.append(json.loads(req.content))
        if path == "/api/v1/units/unit-a/disks" and self.disks is not None:
            return httpx.Response(200, json=self.disks)
        if path.endswith("/layout") and self.disks is not None:
            return httpx.Response(202, json=task(id=9, kind="partition", object=path[7:-7], state="succeeded",
                                                 step=1, total_steps=1, message="done",
                                                 result={"deleted": [1, 2], "created": ["vdb1", "vdb2"]}))
        if path == "/api/v1/units":
            return httpx.Response(200, json=[{"name": "unit-a", "state": "online", "portal_address": "10.0.0.1",
                                              "portal_port": 3260}])
        if path == "/api/v1/users":
            return httpx.Response(403, json={"detail": "user 'vera' (role viewer) lacks the permission "
                                                       "'users.admin'", "error": "Forbidden"})
        return httpx.Response(404, json={"detail": "Not Found"})


def tree(fake: FakeStation, capsys: Any = None) -> tuple[DvsanShell, Root, Output]:
    out = Output()
    sh = DvsanShell(out)
    made: list[Client] = []

    def connect() -> Client:
        made.append(Client("http://station.test", "t", transport=httpx.MockTransport(fake)))
        return made[-1]
    return sh, Root(sh, connect, out), out


def test_gp_starting_and_ls_of_the_top_ask_the_station_nothing(capsys):
    fake = FakeStation()
    sh, root, _ = tree(fake)
    sh.run_line("ls")
    sh.run_line("help")
    assert fake.calls == []
    assert root._client is None                       # not even a connection made
    assert "o- volumes" in capsys.readouterr().out


def test_gp_ls_of_a_thousand_volumes_is_one_call_and_makes_no_node_per_volume(capsys):
    fake = FakeStation(1000)
    sh, root, _ = tree(fake)
    sh.run_line("ls /volumes")
    out = capsys.readouterr().out.splitlines()
    assert fake.calls == ["GET /api/v1/volumes"]
    assert out[0].endswith("[1000 volumes, 15.6 GiB, 1000 free]") and len(out) == 1001
    assert out[1].startswith("  o- 1 ") and out[-1].startswith("  o- 1000 ")
    volumes = root.get_child("volumes")
    assert volumes._by_name == {}                     # rendered from data: no node made
    sh.run_line("ls /volumes")                        # a visit asks afresh
    assert fake.calls == ["GET /api/v1/volumes"] * 2


def test_gp_a_path_to_one_volume_asks_for_that_one_where_the_station_can(capsys):
    fake = FakeStation(1000, volume_route=True)
    sh, _root, _ = tree(fake)
    sh.run_line("/volumes/500 info --json")
    assert fake.calls == ["GET /api/v1/volumes/500"]     # the path's answer serves `info` too
    assert json.loads(capsys.readouterr().out)["id"] == 500
    with pytest.raises(Exception, match="o such path /volumes/5000"):
        sh.run_line("/volumes/5000 info")
    assert "GET /api/v1/volumes" not in fake.calls    # a 404 of the station is final: no listing


def test_gp_without_the_single_volume_route_the_listing_is_the_fallback(capsys):
    fake = FakeStation(20)
    sh, root, _ = tree(fake)
    sh.run_line("/volumes/5 info")
    assert fake.calls == ["GET /api/v1/volumes/5", "GET /api/v1/volumes"]
    assert "vdb5" in capsys.readouterr().out
    root.get_node("/volumes/6").refresh(force=True)   # the missing route is not asked for again
    assert fake.calls[2:] == ["GET /api/v1/volumes?unit=unit-a"]


def test_gp_disks_are_the_volumes_grouped_when_the_station_has_no_disks_route(capsys):
    fake = FakeStation(10)
    sh, _root, _ = tree(fake)
    sh.run_line("ls /units/unit-a/disks 2")
    out = capsys.readouterr().out
    assert "o- vdb ." in out and "[5 volumes (5 free), 80.0 MiB]" in out and "o- vdc6 " in out
    assert "GET /api/v1/units/unit-a/disks" in fake.calls
    sh.run_line("ls /units/unit-a/disks")
    assert fake.calls.count("GET /api/v1/units/unit-a/disks") == 1     # an older station: asked once


def test_ep_a_refusal_is_the_stations_message(capsys):
    fake = FakeStation(3)
    sh, _, _ = tree(fake)
    with pytest.raises(Refused, match="lacks the permission 'users.admin'"):
        sh.run_line("ls /users")
    sh.run_cmdline("ls /users")                       # interactive: shown, and the prompt comes back
    assert "error: refused (403 Forbidden): user 'vera'" in capsys.readouterr().err
    assert sh.errors == 1


@pytest.mark.parametrize(("line", "words"), [
    ("/nowhere ls", "no such path /nowhere"),
    ("/volumes/abc info", "no such path /volumes/abc"),
    ("ls /volumes 0", "at least 1"),
    ("/volumes frobnicate", "command not found frobnicate"),
    ("ls --jsn", "unknown option --jsn"),
    ("/hosts enroll", "missing required parameter"),
    ("/volumes/1 assign host-b bogus=1", "unexpected keyword parameter 'bogus'"),
])
def test_ep_bad_lines_are_refused_with_what_is_wrong(line, words):
    fake = FakeStation(3)
    sh, _, _ = tree(fake)
    with pytest.raises(Exception) as e:
        sh.run_line(line)
    assert words in error_line(e.value)
    assert exit_code(e.value) == 2


def test_gp_tab_completion_of_a_volume_path_loads_the_list_once():
    fake = FakeStation(30)
    _sh, root, _ = tree(fake)
    vols = root.get_child("volumes")
    names = [c.name for c in vols.children]
    assert names[:3] == ["1", "2", "3"] and len(names) == 30
    assert root.complete_assign({}, "1", "volume") == ["1", "10", "11", "12", "13", "14", "15", "16", "17",
                                                       "18", "19"]
    assert fake.calls == ["GET /api/v1/volumes"]


def test_gp_following_a_task_reports_each_change_and_fails_clearly():
    views = [task(step=4 * MiB), task(step=4 * MiB), task(step=12 * MiB),
             task(state="failed", error="unit-a did not confirm", error_kind="Unavailable")]

    def handler(req: httpx.Request) -> httpx.Response:
        assert req.url.params["wait"] == "1.0"
        return httpx.Response(200, json=views.pop(0))
    c = Client("http://station.test", "t", transport=httpx.MockTransport(handler))
    seen: list[int] = []
    with pytest.raises(TaskFailed, match=r"task 7 \(wipe /volumes/3\) failed \(Unavailable\): unit-a did not"):
        c.follow(task(step=0), lambda t: seen.append(t["step"]))
    assert seen == [0, 4 * MiB, 12 * MiB, 8 * MiB]       # each change once (the repeat not shown)


def test_ep_an_unreachable_station_is_one_line(tmp_path):
    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    def slow(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")
    from station.shell.errors import Unreachable
    with pytest.raises(Unreachable, match=r"cannot reach the station at http://s:1: \[Errno 111\]"):
        Client("http://s:1", "t", transport=httpx.MockTransport(refuse)).get("/units")
    with pytest.raises(Unreachable, match="did not answer within 2.5 s"):
        Client("http://s:1", "t", timeout=2.5, transport=httpx.MockTransport(slow)).get("/units")


def test_ep_a_refused_token_says_to_log_in_again():
    c = Client("http://s", "t", transport=httpx.MockTransport(
        lambda r: httpx.Response(401, json={"detail": "token expired", "error": "Unauthenticated"})))
    with pytest.raises(LoginNeeded, match="token expired.*dvsan-shell login"):
        c.get("/units")


def test_gp_the_configshell_parts_the_shell_leans_on_are_there():
    """configshell-fb is used through its public classes, plus these few: if an upgrade drops one,
    this fails here rather than at an operator's TAB."""
    from configshell import ConfigNode, ConfigShell
    for name in ("_get_prompt", "run_cmdline", "run_interactive", "_current_node"):
        assert hasattr(ConfigShell, name) or name == "_current_node"
    sh = DvsanShell(Output())
    Root(sh, lambda: None, Output())  # type: ignore[arg-type, return-value]
    assert sh._current_node.path == "/" and sh._get_prompt() == "dvsan:/> "
    assert isinstance(ConfigNode.__dict__["children"], property)   # the property tree.Node replaces
    assert Path(__file__).exists()


def part(n: int, dev: str, **kw: Any) -> dict[str, Any]:
    return {"number": n, "device": dev, "start_lba": 2048 * n, "end_lba": 2048 * n + 2047,
            "size_bytes": 16 * MiB, "type": "linux", "uuid": "", "name": "", "in_use": [],
            "volume_id": None, "assigned_to": None, **kw}


def test_gp_a_reported_disk_lists_its_partitions_volumes_and_the_rest(capsys):
    disks = [{"name": "vdb", "id": "serial-1", "size_bytes": 2 * 1024**3, "sector_size": 512, "label": "gpt",
              "label_id": None, "system": False, "system_detail": None, "in_use": [],
              "partitions": [part(1, "vdb1", volume_id=1), part(9, "vdb9", in_use=["mounted on /srv"])],
              "free": [{"start_lba": 0, "end_lba": 0, "size_bytes": 1024**3}]}]
    fake = FakeStation(4, disks=disks)
    sh, root, _ = tree(fake)
    sh.run_line("ls /units/unit-a/disks 2")
    out = capsys.readouterr().out
    assert "o- vdb ." in out and "[gpt, 2.0 GiB, 2 partitions, 2 volumes (2 free), 1.0 GiB unpartitioned]" in out
    assert "o- vdb9 ." in out and "not in the pool (in use: mounted on /srv)" in out
    assert "o- vdb2 ." in out                          # a volume the report does not name: still shown
    assert "o- vdc ." in out and "[2 volumes (2 free), 32.0 MiB]" in out   # a disk only volumes tell of
    assert type(root.get_node("/units/unit-a/disks/vdb/vdb1")).__name__ == "DeviceNode"
    assert type(root.get_node("/units/unit-a/disks/vdb/vdb9")).__name__ == "PartitionNode"
    disk = root.get_node("/units/unit-a/disks/vdb")
    assert disk.ui_complete_partition({}, "", "delete") == ["1 "]      # vdb9 is in use


def test_gp_partition_sends_the_layout_the_station_takes_and_follows_its_task(capsys):
    fake = FakeStation(2, disks=[])
    sh, _, _ = tree(fake)
    sh.run_line("/units/unit-a/disks/vdb partition label=gpt delete=1,2 create=1GiB,512M:dvsan-1")
    assert fake.bodies[-1] == {"label": "gpt", "delete": [1, 2], "create": [
        {"size_bytes": 1024**3}, {"size_bytes": 512 * MiB, "name": "dvsan-1"}]}
    assert "unit-a vdb: the new partition table is applied (deleted 1, 2; created vdb1, vdb2)" \
        in capsys.readouterr().out


@pytest.mark.parametrize(("line", "words"), [
    ("/units/unit-a/disks/vdb partition", "nothing to change"),
    ("/units/unit-a/disks/vdb partition create=lots", "not a size: 'lots'"),
    ("/units/unit-a/disks/vdb partition create=512K", "at least 1 MiB"),
    ("/units/unit-a/disks/vdb partition label=msdos", "only gpt"),
    ("/units/unit-a/disks/vdb partition delete=one", "give a whole number"),
])
def test_ep_a_bad_layout_is_refused_before_anything_is_sent(line, words):
    fake = FakeStation(2, disks=[])
    sh, _, _ = tree(fake)
    with pytest.raises(UsageError, match=words):
        sh.run_line(line)
    assert fake.bodies == []


def test_ep_partition_on_a_station_without_the_route_says_so():
    fake = FakeStation(2)
    sh, _, _ = tree(fake)
    with pytest.raises(Refused, match="this station cannot partition disks .*newer dvsan-station"):
        sh.run_line("/units/unit-a/disks/vdb partition create=1GiB")
