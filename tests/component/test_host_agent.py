"""The host agent's commands against the real station on loopback (open-iscsi and the block layer
faked): release after the station already let go, release refused in use, and `sync` both ways,
including the crash between the station's answer and the host's state write (issue 15 items 2, 9)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from host_agent import cli as host_cli
from host_agent.state import HostState
from tests.component.test_station_autoconf import UnitHarness, online
from tests.unit.test_host_detach import FakeBlock, FakeIscsi

HOST_IQN = "iqn.2026-11.org.dvsan.lab:host-b"


def enrol_host(station: Any, tmp_path: Path, name: str, iqn: str) -> Path:
    """Enrol a host as an operator does (POST /api/v1/hosts); its token in a 0600 file."""
    r = httpx.post(station.url + "/api/v1/hosts", headers=station.auth, timeout=10, verify=station.verify,
                   json={"name": name, "initiator_iqns": [iqn]})
    assert r.status_code == 201, r.text
    path = tmp_path / f"{name}.token"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, (r.json()["token"]["token"] + "\n").encode())
    os.close(fd)
    return path


class Host:
    """Runs dvsan-host-agent commands in-process with one state file and one fake initiator."""

    def __init__(self, station: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.station = station
        self.state_file = tmp_path / "host" / "assignments.json"
        self.iscsi = FakeIscsi()
        self.block = FakeBlock()
        self.capsys = capsys
        self.token_file = enrol_host(station, tmp_path, "host-b", HOST_IQN)

    def run(self, *args: str) -> tuple[int, str, str]:
        rc = host_cli.main(["--station", self.station.url, "--name", "host-b", "--state-file",
                            str(self.state_file), "--token-file", str(self.token_file), *args],
                           iscsi=self.iscsi, block=self.block)
        out = self.capsys.readouterr()
        return rc, out.out, out.err

    def request(self) -> dict[str, Any]:
        rc, out, err = self.run("--json", "request", "1GiB", "--initiator-name", HOST_IQN,
                                "--host-address", "127.0.0.2")
        assert rc == 0, err
        return json.loads(out)  # type: ignore[no-any-return]

    def held(self) -> dict[str, Any]:
        return HostState(self.state_file).load()

    def station_ids(self) -> list[int]:
        return [a["id"] for a in self.station.get("/api/v1/assignments?host=host-b").json()]


@pytest.fixture
def host(station: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Host]:
    u = UnitHarness(station)
    try:
        u.start()
        online(station, 3)
        yield Host(station, tmp_path, capsys)
    finally:
        u.close()


# ---- release -------------------------------------------------------------------------------------

def test_gp_release_of_what_the_station_already_released_is_success(host: Host) -> None:
    """Item 9: a release retried after a lost answer gets 404; the host drops its record."""
    a = host.request()
    assert httpx.delete(f"{host.station.url}/api/v1/assignments/{a['id']}?wait=60", headers=host.station.auth, timeout=30).status_code == 200
    rc, out, err = host.run("release", str(a["id"]))
    assert rc == 0, err
    assert out.strip() == f"released assignment {a['id']}: the station had already released it"
    assert host.held() == {} and host.iscsi.sessions() == [] and host.iscsi.node_records() == []


def test_ep_release_of_an_assignment_this_host_does_not_hold_changes_nothing(host: Host) -> None:
    a = host.request()
    rc, _, err = host.run("release", str(a["id"] + 100))
    assert rc == 1 and f"this host holds no assignment {a['id'] + 100}" in err
    assert list(host.held()) == [str(a["id"])] and host.station_ids() == [a["id"]]


def test_ep_release_of_a_mounted_volume_is_refused_and_nothing_changes(host: Host) -> None:
    """Item 2: the station keeps the assignment, the host its record and its session."""
    a = host.request()
    dev = a["device_path"].removeprefix("/dev/")
    host.block = FakeBlock({dev: [f"{dev}1 is mounted at /srv/data"]})
    rc, _, err = host.run("release", str(a["id"]))
    assert rc == 1
    assert f"/dev/{dev} is in use: {dev}1 is mounted at /srv/data" in err and "--force" in err
    assert host.station_ids() == [a["id"]] and list(host.held()) == [str(a["id"])]
    assert len(host.iscsi.sessions()) == 1 and host.block.calls == []
    # --force goes past it, and says what it went past
    rc, out, err = host.run("--json", "release", "--force", str(a["id"]))
    assert rc == 0, err
    assert json.loads(out)["warnings"] == [f"--force: going ahead although {dev}1 is mounted at /srv/data"]
    assert host.station_ids() == [] and host.held() == {} and host.iscsi.sessions() == []


# ---- sync ------------------------------------------------------------------------------------------

class Crash(BaseException):
    """The host agent dies here (power loss, kill -9): nothing after this line runs."""


def test_gp_sync_heals_a_crash_between_the_stations_answer_and_the_state_write(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: HostState, assignment: dict[str, Any]) -> None:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(HostState, "put", crash)
        with pytest.raises(Crash):
            host.run("request", "1GiB", "--initiator-name", HOST_IQN, "--host-address", "127.0.0.2")
    [aid] = host.station_ids()
    assert host.held() == {} and host.iscsi.sessions() == []   # the station has it, the host not
    rc, out, err = host.run("sync")
    assert rc == 0, err
    assert out.strip() == f"assignment {aid}: the station had it, this host did not: added and logged in"
    rec = host.held()[str(aid)]
    assert rec["device_path"] == "/dev/sdb" and rec["portal_address"] == "127.0.0.1"
    assert [s.target_iqn for s in host.iscsi.sessions()] == [rec["target_iqn"]]
    # and now the host can release it the ordinary way
    assert host.run("sync")[1].strip() == "in sync: nothing to do"
    assert host.run("release", str(aid))[0] == 0 and host.station_ids() == []


def test_gp_sync_without_login_only_records(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    a = httpx.post(host.station.url + "/api/v1/assignments?wait=60", headers=host.station.auth, timeout=30, json={
        "host": "host-b", "initiator_iqn": HOST_IQN, "host_address": "127.0.0.2", "size": "1GiB"}).json()
    rc, out, err = host.run("--json", "sync", "--no-login")
    assert rc == 0, err
    assert json.loads(out) == {"added": [a["id"]], "dropped": [], "new_portals": [], "logged_in": [], "mirrors": [],
                               "stale": [], "problems": []}
    assert list(host.held()) == [str(a["id"])] and host.iscsi.calls == []


def test_gp_sync_drops_a_record_the_station_no_longer_has_after_logging_out(host: Host) -> None:
    a = host.request()
    httpx.delete(f"{host.station.url}/api/v1/assignments/{a['id']}?wait=60", headers=host.station.auth, timeout=30)
    rc, out, err = host.run("sync")
    assert rc == 0, err
    assert out.strip() == f"assignment {a['id']}: the station no longer has it: logged out and dropped"
    assert host.held() == {} and host.iscsi.sessions() == [] and host.iscsi.node_records() == []
    assert ("flush", "sdb") in host.block.calls


def test_ep_sync_keeps_a_record_the_station_dropped_while_its_device_is_in_use(host: Host) -> None:
    a, b = host.request(), host.request()
    for x in (a, b):
        httpx.delete(f"{host.station.url}/api/v1/assignments/{x['id']}?wait=60", headers=host.station.auth, timeout=30)
    dev = a["device_path"].removeprefix("/dev/")
    host.block = FakeBlock({dev: [f"{dev} is mounted at /srv/a"]})
    rc, out, err = host.run("sync")
    assert rc == 1
    assert (f"problem: assignment {a['id']}: the station no longer has it, but it stays on this host: "
            f"/dev/{dev} is in use: {dev} is mounted at /srv/a") in err
    # the other one was dropped all the same: apply what you can, report the rest
    assert f"assignment {b['id']}: the station no longer has it: logged out and dropped" in out
    assert list(host.held()) == [str(a["id"])]
    assert [s.target_iqn for s in host.iscsi.sessions()] == [a["target_iqn"]]


def test_gp_sync_logs_in_at_a_new_portal_and_keeps_the_old_one(host: Host) -> None:
    """Item 9 with item 5: the unit's address changed; the live session on the old one stays."""
    a = host.request()
    # the host logged in when the unit was at 127.0.0.9; the station now names 127.0.0.1
    state = HostState(host.state_file)
    state.put({**host.held()[str(a["id"])], "portal_address": "127.0.0.9"})
    host.iscsi.login(a["target_iqn"], "127.0.0.9", 3260)
    rc, out, err = host.run("--json", "sync")
    assert rc == 0, err
    assert json.loads(out)["new_portals"] == [{"id": a["id"], "portal": "127.0.0.1:3260"}]
    assert {s.portal_ip for s in host.iscsi.sessions()} == {"127.0.0.1", "127.0.0.9"}
    assert not [c for c in host.iscsi.calls if c[0] in ("logout", "logout_session", "delete_node")]
    rec = host.held()[str(a["id"])]
    assert rec["portal_address"] == "127.0.0.9" and rec["portals"] == [["127.0.0.9", 3260], ["127.0.0.1", 3260]]
    # release later logs out of both
    assert host.run("release", str(a["id"]))[0] == 0 and host.iscsi.sessions() == []


def test_ep_sync_with_the_station_down_changes_nothing(host: Host) -> None:
    a = host.request()
    before = host.state_file.read_text()
    host.station.stop()
    rc, _, err = host.run("sync")
    assert rc == 1 and "unreachable" in err
    assert host.state_file.read_text() == before and len(host.iscsi.sessions()) == 1
    assert a["id"] in [int(k) for k in host.held()]


def test_ep_corrupt_state_file_stops_every_command_naming_the_file(host: Host) -> None:
    host.state_file.parent.mkdir(parents=True, exist_ok=True)
    host.state_file.write_text("{half a file")
    for args in (("status",), ("sync",), ("release", "1"),
                 ("request", "1GiB", "--initiator-name", HOST_IQN, "--host-address", "127.0.0.2")):
        rc, _, err = host.run(*args)
        assert rc == 1 and f"state file {host.state_file} is not valid JSON" in err
    assert host.state_file.read_text() == "{half a file"
    assert host.station_ids() == []   # request stopped before the station allocated anything
