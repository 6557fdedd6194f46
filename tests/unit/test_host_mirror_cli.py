"""dvsan-host-agent's mirror commands end to end through cli.main, with fakes for the station
client, open-iscsi, the block layer and md (the real kernels are in the lab tests)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dvsan.errors import Conflict
from host_agent import cli
from host_agent.iscsiadm import IscsiadmError, NodeRecord, Session
from host_agent.mdadm import ArrayView, Member, OtherSignature, Superblock
from tests.unit.test_host_detach import FakeBlock, FakeIscsi

U = "3d0b6b0c:1f8e2a7b:9c4d5e6f:01234567"


def member(aid: int, unit: str, dev: str, mirror_id: int = 5, host: str = "host-b") -> dict[str, Any]:
    return {"id": aid, "host": host, "mirror_id": mirror_id, "member_state": "unknown", "unit": unit,
            "device": dev, "unit_address": f"10.0.0.{aid}", "unit_dns_name": None, "portal_port": 3260,
            "lun": 0, "size_bytes": 1 << 30, "start_lba": 2048, "end_lba": 2099199,
            "target_iqn": f"iqn.2026-11.org.dvsan:{unit}:{dev}", "chap_user": f"u{aid}", "chap_secret": "s3cret"}


class FakeStation:
    """The station's REST API as the host agent calls it."""

    def __init__(self, members: list[dict[str, Any]]) -> None:
        self.members = members
        self.calls: list[tuple[Any, ...]] = []
        self.base_url = "http://127.0.0.1:7480"

    def request_mirror(self, host: str, initiator: str, address: str, size: int, mutual_chap: bool = False) -> dict[str, Any]:
        self.calls.append(("request_mirror", host, size))
        return {"id": 5, "host": host, "requested_bytes": size, "members": self.members}

    def release_mirror(self, mid: int) -> dict[str, Any]:
        self.calls.append(("release_mirror", mid))
        self.members = []
        return {"id": mid, "members": []}

    def assignments(self, host: str | None = None) -> list[dict[str, Any]]:
        return list(self.members)

    def report_mirror_health(self, mid: int, state: str, members: dict[str, str], sync_percent: float | None = None,
                             detail: str | None = None) -> dict[str, Any]:
        self.calls.append(("health", mid, state, members, sync_percent))
        return {}


class Iscsi(FakeIscsi):
    def set_replacement_timeout(self, target_iqn: str, portal_ip: str, port: int, seconds: int) -> None:
        self.calls.append(("replacement_timeout", target_iqn, seconds))


class FakeMd:
    """md as a little world: superblocks per device, one array of mirror 5 with its members."""

    def __init__(self, supers: dict[str, Any] | None = None) -> None:
        self.supers: dict[str, Any] = dict(supers or {})
        self.members: dict[str, str] | None = None     # device -> 'in_sync' / 'faulty' / 'spare'
        self.calls: list[tuple[Any, ...]] = []
        self.iscsi: Any = None

    def examine(self, device: str) -> Any:
        return self.supers.get(device)

    def create(self, mid: int, devices: list[str]) -> None:
        self.calls.append(("create", mid, list(devices)))
        for d in devices:
            self.supers[d] = Superblock(U, f"any:dvsan-{mid}", "raid1", 2)
        self.members = {d: "in_sync" for d in devices}

    def assemble(self, mid: int, devices: list[str]) -> None:
        self.calls.append(("assemble", mid, list(devices)))
        self.members = {d: "in_sync" for d in devices}

    def add(self, mid: int, device: str, kn: str | None = None) -> None:
        self.calls.append(("add", mid, device))
        assert self.members is not None
        self.members[device] = "spare"

    def fail_remove(self, mid: int, device: str, kn: str | None = None) -> None:
        self.calls.append(("fail_remove", mid, device))
        assert self.members is not None
        self.members.pop(device)
        self.sessions_at_fail = list(self.iscsi.sessions()) if self.iscsi is not None else []

    def stop(self, mid: int, kn: str | None = None) -> None:
        self.calls.append(("stop", mid, kn))
        self.members = None

    def kernel_name(self, mid: int) -> str | None:
        return "md127" if self.members is not None else None

    def array_of(self, device: str) -> str | None:
        return "md127" if self.members and device in self.members else None

    def view(self, kn: str) -> ArrayView | None:
        if self.members is None:
            return None
        ms = tuple(Member(d, frozenset({f}), i) for i, (d, f) in enumerate(self.members.items()))
        active = sum(1 for m in ms if "in_sync" in m.flags)
        action = "recover" if any("spare" in m.flags for m in ms) else "idle"
        return ArrayView("md127", "clean", 2, 2 - active, action, 40.0 if action == "recover" else None, ms)


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    station = FakeStation([member(11, "unit-a", "vda2"), member(12, "unit-b", "vdb2")])
    monkeypatch.setattr(cli, "StationClient", lambda *a, **kw: station)
    monkeypatch.setenv("DVSAN_HOST_TOKEN", "tok")

    w = SimpleNamespace(station=station, iscsi=Iscsi(), block=FakeBlock(), md=FakeMd(), state=tmp_path / "state.json")
    w.md.iscsi = w.iscsi

    def run(*argv: str) -> int:
        return cli.main(["--station", "http://127.0.0.1:7480", "--name", "host-b", "--state-file", str(w.state),
                         *argv], iscsi=w.iscsi, block=w.block, md=w.md)

    w.run = run
    return w


def request(world: Any) -> None:
    assert world.run("request", "1GiB", "--mirrored", "--initiator-name", "iqn.x:b", "--host-address", "10.0.0.99") == 0


def test_gp_request_mirrored(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    out = capsys.readouterr().out
    assert "mirror 5: block device /dev/md/dvsan-5 ready" in out and "s3cret" not in out
    assert world.station.calls[0] == ("request_mirror", "host-b", 1 << 30)
    kinds = [c[0] for c in world.iscsi.calls]
    for t in ("iqn.2026-11.org.dvsan:unit-a:vda2", "iqn.2026-11.org.dvsan:unit-b:vdb2"):
        assert kinds.index("replacement_timeout") < kinds.index("login")
        assert ("replacement_timeout", t, 5) in world.iscsi.calls and any(c[:2] == ("login", t) for c in world.iscsi.calls)
    assert world.md.calls == [("create", 5, ["sdb", "sdc"])]
    held = json.loads(world.state.read_text())
    assert {r["mirror_id"] for r in held.values()} == {5} and {r["md_uuid"] for r in held.values()} == {U}


def test_gp_status_names_the_mirror(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    capsys.readouterr()
    assert world.run("status") == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and all("member of mirror 5 (/dev/md/dvsan-5) logged in" in ln for ln in out)


def test_gp_request_mirrored_json(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.run("--json", "request", "1GiB", "--mirrored", "--initiator-name", "iqn.x:b",
                     "--host-address", "10.0.0.99") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["md_device"] == "/dev/md/dvsan-5" and len(out["members"]) == 2
    assert {m["chap_secret"] for m in out["members"]} == {"***"}


def test_ep_request_mirrored_refuses_a_member_with_a_superblock(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world.md.supers["sdc"] = Superblock("11111111:22222222:33333333:44444444", "host-c:dvsan-9", "raid1", 2)
    assert world.run("request", "1GiB", "--mirrored", "--initiator-name", "iqn.x:b", "--host-address", "10.0.0.99") == 1
    assert "sdc already carries an md superblock (host-c:dvsan-9" in capsys.readouterr().err
    assert world.md.calls == []          # nothing created over it
    assert len(json.loads(world.state.read_text())) == 2   # both recorded: release --mirror can undo


def test_ep_request_mirrored_bad_size_asks_nothing(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.run("request", "lots", "--mirrored") == 1
    assert "not a size" in capsys.readouterr().err and world.station.calls == []


def test_ep_release_mirror_refused_while_mounted_changes_nothing(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    world.block._users = {"md127": ["md127 is mounted at /data"]}
    assert world.run("release", "5", "--mirror") == 1
    assert "mounted at /data" in capsys.readouterr().err
    assert not any(c[0] == "stop" for c in world.md.calls) and not any(c[0] == "logout" for c in world.iscsi.calls)
    assert ("release_mirror", 5) not in world.station.calls and len(json.loads(world.state.read_text())) == 2


def test_gp_release_mirror(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    assert world.run("release", "5", "--mirror") == 0
    assert "released mirror 5" in capsys.readouterr().out
    assert ("stop", 5, "md127") in world.md.calls and ("release_mirror", 5) in world.station.calls
    assert world.iscsi.sessions() == [] and json.loads(world.state.read_text()) == {}


def test_ep_release_of_an_unknown_mirror(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.run("release", "9", "--mirror") == 1
    assert "holds no mirror 9" in capsys.readouterr().err


def test_gp_sync_adds_the_replacement_and_fails_out_the_dropped_member(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    world.md.members["sdc"] = "faulty"
    world.station.members = [world.station.members[0], member(13, "unit-c", "vdc2")]   # 12 replaced by 13
    capsys.readouterr()
    assert world.run("sync") == 0
    out = capsys.readouterr().out
    assert "assignment 13: the station had it" in out and "added sdd to /dev/md/dvsan-5" in out
    assert "failed and removed sdc" in out and "assignment 12: the station no longer has it" in out
    calls = world.md.calls
    assert calls.index(("fail_remove", 5, "sdc")) > calls.index(("add", 5, "sdd"))
    # the dropped member left the array while its session was still there, i.e. before its logout
    assert any(s.target_iqn.endswith("unit-b:vdb2") for s in world.md.sessions_at_fail)
    assert not any(s.target_iqn.endswith("unit-b:vdb2") for s in world.iscsi.sessions())
    held = json.loads(world.state.read_text())
    assert set(held) == {"11", "13"} and held["13"]["md_uuid"] == U     # the replacement learnt the uuid
    assert world.md.members == {"sdb": "in_sync", "sdd": "spare"}
    assert out.count("12: the station no longer has it") == 1


def test_ep_sync_never_removes_the_last_active_member(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    world.md.members = {"sdb": "in_sync", "sdc": "faulty"}
    world.station.members = [world.station.members[1]]     # the station dropped the only active one
    assert world.run("sync") == 1
    assert "last active member" in capsys.readouterr().err
    assert world.md.members == {"sdb": "in_sync", "sdc": "faulty"} and "11" in json.loads(world.state.read_text())


def test_gp_sync_takes_down_a_mirror_the_station_no_longer_gives_this_host(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Host B back after a takeover: its mirror is the spare host's now."""
    request(world)
    world.station.members = []
    assert world.run("sync") == 0
    assert ("stop", 5, "md127") in world.md.calls and json.loads(world.state.read_text()) == {}
    assert world.iscsi.sessions() == [] and "stopped /dev/md/dvsan-5" in capsys.readouterr().out


def test_ep_sync_leaves_a_mounted_array_of_a_gone_mirror_alone(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    world.station.members = []
    world.block._users = {"md127": ["md127 is mounted at /data"]}
    assert world.run("sync") == 1
    assert "mounted at /data" in capsys.readouterr().err
    assert not any(c[0] == "stop" for c in world.md.calls) and len(world.iscsi.sessions()) == 2
    assert set(json.loads(world.state.read_text())) == {"11", "12"}


def test_gp_sync_on_a_spare_host_logs_in_and_assembles(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """A takeover: the spare host holds nothing; the members carry B's array (B's home host)."""
    b_sb = Superblock(U, "host-b:dvsan-5", "raid1", 2)
    world.md.supers = {"sdb": b_sb, "sdc": b_sb}
    assert world.run("sync") == 0
    assert world.md.calls == [("assemble", 5, ["sdb", "sdc"])]
    assert "assembled /dev/md/dvsan-5" in capsys.readouterr().out
    assert {r["md_uuid"] for r in json.loads(world.state.read_text()).values()} == {U}   # recorded now
    assert world.run("sync") == 0 and world.md.calls == [("assemble", 5, ["sdb", "sdc"])]   # idempotent


def test_gp_a_dropped_member_stuck_reconnecting_to_its_dead_unit_is_removed(world: Any) -> None:
    request(world)
    world.md.members["sdc"] = "faulty"
    sid = next(s.sid for s in world.iscsi.sessions() if s.target_iqn.endswith("vdb2"))
    world.iscsi.stuck.add(sid)
    world.station.members = [world.station.members[0], member(13, "unit-c", "vdc2")]
    assert world.run("sync") == 0
    assert ("remove_session", sid) in world.iscsi.calls
    assert not any(s.target_iqn.endswith("vdb2") for s in world.iscsi.sessions())


def test_ep_a_dropped_member_someone_else_holds_stays(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    world.md.members["sdc"] = "faulty"
    world.station.members = [world.station.members[0], member(13, "unit-c", "vdc2")]
    world.block._users = {"sdc": ["sdc is open by process 4242 (dd)"]}
    assert world.run("sync") == 1
    assert "process 4242" in capsys.readouterr().err
    assert any(s.target_iqn.endswith("vdb2") for s in world.iscsi.sessions())
    assert "12" in json.loads(world.state.read_text())


def test_gp_sync_without_login_only_records_a_mirror(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.run("sync", "--no-login") == 0
    assert set(json.loads(world.state.read_text())) == {"11", "12"} and world.md.calls == []
    assert not any(c[0] == "login" for c in world.iscsi.calls)


def test_ep_sync_refuses_another_arrays_member(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world.md.supers = {"sdb": OtherSignature("an MBR partition table")}
    assert world.run("sync") == 1
    assert "carries an MBR partition table" in capsys.readouterr().err and world.md.calls == []


def test_gp_sync_cleans_stale_dvsan_targets_and_leaves_others_alone(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    world.station.members = []
    stale, foreign = "iqn.2026-11.org.dvsan:unit-a:vda9", "iqn.2001-04.com.example:other"
    world.iscsi.nodes += [NodeRecord("10.0.0.1", 3260, 1, stale), NodeRecord("10.0.0.7", 3260, 1, foreign)]
    world.iscsi._sessions.append(Session("tcp", 40, "10.0.0.1", 3260, 1, stale))
    assert world.run("sync") == 0
    assert f"stale target {stale}" in capsys.readouterr().out
    assert [n.target_iqn for n in world.iscsi.nodes] == [foreign] and world.iscsi.sessions() == []


def test_gp_report(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    request(world)
    world.md.members = {"sdb": "in_sync", "sdd": "spare"}
    capsys.readouterr()
    assert world.run("report") == 0
    assert world.station.calls[-1] == ("health", 5, "resyncing", {"11": "active", "12": "missing"}, 40.0)
    assert "mirror 5: resyncing" in capsys.readouterr().out


def test_gp_watch_syncs_and_reports(world: Any) -> None:
    request(world)
    assert world.run("watch", "--interval", "0.01", "--rounds", "2") == 0
    health = [c for c in world.station.calls if c[0] == "health"]
    assert health and health[0][2] == "clean"


def test_gp_watch_gives_back_the_signal_handlers(world: Any) -> None:
    import signal

    before = signal.getsignal(signal.SIGTERM)
    assert world.run("watch", "--interval", "0.01", "--rounds", "1") == 0
    assert signal.getsignal(signal.SIGTERM) is before


def test_ep_watch_bad_interval(world: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.run("watch", "--interval", "0") == 1
    assert "--interval must be positive" in capsys.readouterr().err


def test_ep_watch_goes_on_when_the_station_is_away(world: Any) -> None:
    def away(*a: Any, **kw: Any) -> Any:
        raise Conflict("station said 503")

    world.station.assignments = away
    assert world.run("watch", "--interval", "0.01", "--rounds", "2") == 0


def plain(aid: int, unit: str, dev: str, host: str = "host-b") -> dict[str, Any]:
    return {k: v for k, v in member(aid, unit, dev, host=host).items() if k not in ("mirror_id", "member_state")}


def test_gp_sync_after_a_host_reboot_logs_in_again_to_a_plain_volume_it_holds(world: Any,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The state file survived the reboot, the sessions did not: sync brings the block device back."""
    world.station.members = [plain(21, "unit-a", "vda3")]
    assert world.run("sync") == 0 and [c for c in world.iscsi.calls if c[0] == "login"]
    world.iscsi._sessions.clear()                    # the reboot
    world.iscsi.devices.clear()
    world.iscsi.calls.clear()
    assert world.run("sync") == 0
    assert [c for c in world.iscsi.calls if c[0] == "login"], "no login after the reboot"
    assert "held without a session (a reboot?): logged in again" in capsys.readouterr().out
    world.iscsi.calls.clear()
    assert world.run("sync") == 0 and not [c for c in world.iscsi.calls if c[0] == "login"]   # idempotent


def test_ep_sync_relogin_that_fails_is_reported_and_the_record_kept(world: Any,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    world.station.members = [plain(21, "unit-a", "vda3")]
    assert world.run("sync") == 0
    world.iscsi._sessions.clear()
    world.iscsi.devices.clear()

    def refused(*a: Any) -> None:
        raise IscsiadmError("iscsiadm: login failed: authorization failure (exit 24)", 24)
    world.iscsi.login = refused
    assert world.run("sync") == 1
    assert "assignment 21: no session, and logging in again failed" in capsys.readouterr().err
    assert "21" in json.loads(world.state.read_text())


def test_gp_report_leaves_out_a_member_the_station_replaced(world: Any) -> None:
    """Seen in the lab: the replaced member is still on its way out of the array here (its unit
    dead); reporting it made every report a 422 and the station never heard the mirror heal."""
    request(world)
    world.station.members = [world.station.members[0], member(13, "unit-c", "vdc2")]
    world.md.members = {"sdb": "in_sync", "sdc": "faulty"}
    assert world.run("report") == 0
    sent = world.station.calls[-1]
    assert sent[0] == "health" and set(sent[3]) == {"11"}, sent
