"""The unit agent's last defence: how it takes an EXPORTS message (issue 15 items 1, 4, 6, 7;
issue 18 hole 3). Driven through UnitAgent.apply_exports with an in-memory LIO."""

import asyncio
import json
import os
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from dvsan.errors import AdapterError, Conflict, InvalidInput
from dvsan.model import Export, Partition
from dvsan.naming import target_iqn
from dvsan.protocol import Message, MsgType
from dvsan.reconcile import Action, CreateExport, DeleteExport, SetInitiators
from unit_agent.agent import Busy, UnitAgent
from unit_agent.poolpin import PoolPin

UNIT = "unit-a"
HOST1 = "iqn.2026-11.org.dvsan.host:host-1"
HOST2 = "iqn.2026-11.org.dvsan.host:host-2"
POOL = "5b0e7c1a-1111-4222-8333-944455556666"


def part(device: str, number: int, start: int, length: int = 2048, uid: str = "") -> Partition:
    return Partition(device, "vdb", number, start, length, start + length - 1, 512, length * 512,
                     uid or f"0c1d2e3f-0000-4000-8000-00000000000{number}")


PARTS = [part("vdb1", 1, 2048), part("vdb2", 2, 6144)]


class FakeLio:
    def __init__(self) -> None:
        self.exports: dict[str, Export] = {}
        self.logged_in: dict[str, int] = {}
        self.applied: list[Action] = []
        self.gate: threading.Event | None = None    # set: apply blocks until the event is set

    def actual_exports(self) -> list[Export]:
        return sorted(self.exports.values(), key=lambda e: e.target_iqn)

    def sessions(self, target: str) -> int:
        return self.logged_in.get(target, 0)

    def apply(self, actions: Sequence[Action]) -> None:
        if self.gate is not None:
            self.gate.wait(30)
        for a in actions:
            self.applied.append(a)
            if isinstance(a, DeleteExport):
                self.exports.pop(a.export.target_iqn)
            elif isinstance(a, (CreateExport, SetInitiators)):
                # LIO does not know extents: what it holds has none
                self.exports[a.export.target_iqn] = Export(a.export.device, a.export.target_iqn,
                                                           a.export.initiators, a.export.lun, a.export.wwn)


def make_agent(parts: list[Partition] | None = None, pin: PoolPin | None = None) -> tuple[UnitAgent, FakeLio, list[Partition]]:
    lio = FakeLio()
    offered = list(PARTS if parts is None else parts)
    agent = UnitAgent(UNIT, b"k" * 32, ("127.0.0.1", 9), "127.0.0.1", 3260, lio, lambda: list(offered))
    if pin is not None:
        agent.pin = pin
    return agent, lio, offered


def export(p: Partition, *initiators: str, **over: Any) -> dict[str, Any]:
    e = Export(p.device, target_iqn(UNIT, p.device), tuple(initiators or (HOST1,)), 0,
               wwn="6a1c5f0e-2b7d-4f7e-9d3a-8e0f5c1d2b4" + str(p.number), extent=p.extent).to_wire()
    return {**e, **over}


def body(*exports: dict[str, Any], generation: int = 1, pool: str = POOL, **over: Any) -> dict[str, Any]:
    return {"unit": UNIT, "pool_id": pool, "generation": generation, "exports": list(exports), **over}


def run(agent: UnitAgent, b: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(agent.apply_exports(b))


def held(lio: FakeLio) -> dict[str, tuple[str, ...]]:
    return {k: e.initiators for k, e in lio.exports.items()}


T1, T2 = target_iqn(UNIT, "vdb1"), target_iqn(UNIT, "vdb2")


def test_gp_exports_matching_the_kernel_are_applied_and_nothing_refused():
    agent, lio, _ = make_agent()
    ack = run(agent, body(export(PARTS[0]), export(PARTS[1], HOST2)))
    assert held(lio) == {T1: (HOST1,), T2: (HOST2,)}
    assert ack["refused"] == [] and ack["exports"] == 2
    assert {e.wwn for e in lio.exports.values()} == {"6a1c5f0e-2b7d-4f7e-9d3a-8e0f5c1d2b41",
                                                     "6a1c5f0e-2b7d-4f7e-9d3a-8e0f5c1d2b42"}


def test_ep_exports_for_another_unit_are_refused_whole_and_change_nothing():
    agent, lio, _ = make_agent()
    run(agent, body(export(PARTS[0])))
    with pytest.raises(Conflict, match="sent to unit 'unit-a'"):
        run(agent, {**body(), "unit": "unit-b"})
    assert held(lio) == {T1: (HOST1,)}


def test_ep_foreign_target_name_is_refused_and_the_rest_applied():
    agent, lio, _ = make_agent()
    bad = export(PARTS[0], target_iqn="iqn.2026-11.org.dvsan:unit-b:vdb1")
    ack = run(agent, body(bad, export(PARTS[1])))
    assert held(lio) == {T2: (HOST1,)}
    assert ack["refused"] == [{"target_iqn": "iqn.2026-11.org.dvsan:unit-b:vdb1",
                               "reason": "target iqn.2026-11.org.dvsan:unit-b:vdb1 does not follow this "
                                         "unit's naming"}]


def test_ep_device_not_offered_is_refused_and_the_other_export_stays():
    """Issue 15 item 4: one of two assigned devices disappears; the other stays exported."""
    agent, lio, offered = make_agent()
    run(agent, body(export(PARTS[0]), export(PARTS[1])))
    offered.remove(PARTS[0])                             # vdb1 failed, or LVM took it at boot
    ack = run(agent, body(export(PARTS[0]), export(PARTS[1])))
    assert T2 in lio.exports
    assert [r["target_iqn"] for r in ack["refused"]] == [T1]
    assert "not offered" in ack["refused"][0]["reason"]
    # its old export is left as it is (the device is gone: nothing to protect by removing it)
    assert T1 in lio.exports


def test_ep_changed_extent_is_refused_and_its_old_export_removed():
    """Issue 15 item 1: the same device name now covers another extent: never export it again."""
    agent, lio, offered = make_agent()
    run(agent, body(export(PARTS[0]), export(PARTS[1])))
    lio.logged_in[T1] = 1                                # even with the host logged in
    offered[0] = part("vdb1", 1, 4096)                   # repartitioned: same name, new start
    ack = run(agent, body(export(PARTS[0]), export(PARTS[1]), generation=2))
    assert T1 not in lio.exports and T2 in lio.exports
    assert [r["target_iqn"] for r in ack["refused"]] == [T1]
    assert "extent changed: expected start 2048" in ack["refused"][0]["reason"]


def test_ep_changed_partition_identity_is_refused():
    agent, lio, offered = make_agent()
    offered[0] = part("vdb1", 1, 2048, uid="99999999-0000-4000-8000-000000000001")   # a replaced disk
    ack = run(agent, body(export(PARTS[0])))
    assert lio.exports == {} and "identity changed" in ack["refused"][0]["reason"]


def test_ep_export_without_extent_is_refused():
    agent, lio, _ = make_agent()
    e = export(PARTS[0])
    del e["extent"]
    ack = run(agent, body(e))
    assert lio.exports == {} and "no extent" in ack["refused"][0]["reason"]


def test_ep_malformed_export_is_refused_by_position_and_the_rest_applied():
    agent, lio, _ = make_agent()
    ack = run(agent, body({"device": "vdb1"}, "junk", export(PARTS[1])))
    assert held(lio) == {T2: (HOST1,)}
    assert [r["target_iqn"] for r in ack["refused"]] == ["#0", "#1"]


@pytest.mark.parametrize("bad, words", [
    ({"exports": "all"}, "'exports' must be a list"),
    ({"drop": "x"}, "'drop' must be a list"),
    ({"pool_id": None}, "pool_id"),
    ({"pool_id": ""}, "pool_id"),
    ({"generation": -1}, "generation"),
    ({"generation": "7"}, "generation"),
    ({"generation": True}, "generation"),
])
def test_ep_malformed_message_is_refused_whole(bad, words):
    agent, lio, _ = make_agent()
    run(agent, body(export(PARTS[0])))
    with pytest.raises(InvalidInput, match=words):
        run(agent, {**body(), **bad})
    assert held(lio) == {T1: (HOST1,)}


def test_ep_a_second_station_with_a_fresh_database_unexports_nothing(tmp_path):
    """Issue 15 item 6: an empty list from another pool is refused before anything changes."""
    agent, lio, _ = make_agent(pin=PoolPin(tmp_path / "pool.json"))
    run(agent, body(export(PARTS[0]), export(PARTS[1]), generation=5))
    with pytest.raises(Conflict, match="belongs to pool " + POOL):
        run(agent, body(pool="0d0d0d0d-aaaa-4bbb-8ccc-dddddddddddd", generation=0))
    assert set(lio.exports) == {T1, T2}


def test_ep_an_older_generation_is_refused(tmp_path):
    agent, lio, _ = make_agent(pin=PoolPin(tmp_path / "pool.json"))
    run(agent, body(export(PARTS[0]), export(PARTS[1]), generation=5))
    with pytest.raises(Conflict, match="generation 4 refused"):
        run(agent, body(export(PARTS[0]), generation=4))
    assert set(lio.exports) == {T1, T2}
    run(agent, body(export(PARTS[0]), export(PARTS[1]), generation=5))     # the same one again: fine


def test_gp_the_pin_survives_a_restart_in_a_private_file(tmp_path):
    path = tmp_path / "state" / "pool.json"
    agent, _, _ = make_agent(pin=PoolPin(path))
    run(agent, body(generation=9))
    assert json.loads(path.read_text()) == {"pool_id": POOL, "generation": 9, "owned": []}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = PoolPin(path)                                  # the agent restarted
    assert (again.pool_id, again.generation) == (POOL, 9)
    with pytest.raises(Conflict):
        again.admit(POOL, 8)
    assert [p.name for p in path.parent.iterdir()] == ["pool.json"]    # no temp file left


@pytest.mark.parametrize("content", ["{", "[]", '{"pool_id": 3, "generation": 1}', ""])
def test_ep_an_unreadable_pin_fails_closed(tmp_path, content):
    path = tmp_path / "pool.json"
    path.write_text(content)
    with pytest.raises(AdapterError, match="forget-pool"):
        PoolPin(path)


def test_ep_a_routine_push_never_drops_an_export_under_live_sessions():
    agent, lio, _ = make_agent()
    run(agent, body(export(PARTS[0]), export(PARTS[1])))
    lio.logged_in[T1] = 1
    ack = run(agent, body(export(PARTS[1])))             # T1 no longer listed, but a host is on it
    assert set(lio.exports) == {T1, T2}
    assert ack["kept"] == [{"target_iqn": T1, "reason": "1 initiator(s) logged in: not removed without "
                                                        "an operator's release"}]
    run(agent, body(export(PARTS[1]), drop=[T1]))        # the operator released it: now it goes
    assert set(lio.exports) == {T2}


def test_gp_a_push_drops_an_unlisted_export_nobody_uses():
    agent, lio, _ = make_agent()
    run(agent, body(export(PARTS[0]), export(PARTS[1])))
    ack = run(agent, body(export(PARTS[1])))
    assert set(lio.exports) == {T2} and ack["kept"] == []


def test_ep_a_hung_change_makes_the_unit_busy_and_degraded_then_recovers():
    """Issue 15 item 7: bounded waits. A change stuck in the kernel does not wedge the agent:
    pushes get 'busy' at once, heartbeats say degraded, and all is well once it returns."""
    agent, lio, _ = make_agent()
    agent.apply_timeout, agent.busy_wait = 0.2, 0.1
    gate = lio.gate = threading.Event()

    async def scenario() -> None:
        with pytest.raises(Busy, match="has run for over"):
            await agent.apply_exports(body(export(PARTS[0])))
        assert agent.health[0] == "degraded"
        with pytest.raises(Busy):
            await agent.apply_exports(body(export(PARTS[1])))
        msg = Message(MsgType.EXPORTS, 1, 0, body(export(PARTS[1])), True)
        reply = await agent.handle(msg, ("127.0.0.1", 1))
        assert reply is not None and reply["status"] == "busy"
        gate.set()
        for _ in range(200):
            if agent.health[0] == "ok":
                break
            await asyncio.sleep(0.01)
        assert agent.health == ("ok", None)
        lio.gate = None
        ack = await agent.apply_exports(body(export(PARTS[0]), export(PARTS[1])))
        assert ack["refused"] == [] and set(lio.exports) == {T1, T2}

    asyncio.run(scenario())


def test_ep_exports_with_serial_change_are_recreated():
    agent, lio, _ = make_agent()
    run(agent, body(export(PARTS[0])))
    run(agent, body(export(PARTS[0], wwn="0b0b0b0b-0000-4000-8000-000000000000")))
    assert lio.exports[T1].wwn == "0b0b0b0b-0000-4000-8000-000000000000"
    assert [type(a).__name__ for a in lio.applied] == ["CreateExport", "DeleteExport", "CreateExport"]


def test_gp_pin_file_path_is_only_written_on_change(tmp_path: Path):
    path = tmp_path / "pool.json"
    pin = PoolPin(path)
    pin.admit(POOL, 1)
    m0 = path.stat().st_mtime_ns
    pin.admit(POOL, 1)
    assert path.stat().st_mtime_ns == m0

