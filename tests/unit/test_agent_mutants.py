"""unit_agent.agent around apply_exports, the cases its mutants showed untested: what the agent
sends (STARTUP, HEARTBEAT, STORAGE_INFO, SHUTDOWN) and when, station failover, link changes, and
the exact answer to an EXPORTS message. Driven with a fake endpoint that records every send."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import pytest

from dvsan import __version__, secretbox
from dvsan.errors import AdapterError, Conflict, InvalidInput, Unavailable
from dvsan.identity import Signer, StationPin, generate
from dvsan.model import Partition
from dvsan.naming import target_iqn
from dvsan.protocol import Message, MsgType
from tests.unit.test_unit_exports import HOST1, PARTS, UNIT, body, export, held, make_agent, run
from unit_agent.agent import Busy, UnitAgent

ST1, ST2 = ("10.0.0.5", 4790), ("10.0.0.6", 4790)


class FakeEndpoint:
    """Records sends; answers each with the next of `answers` (an exception is raised)."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.sent: list[tuple[Any, MsgType, dict[str, Any], dict[str, Any]]] = []
        self.closed = False

    async def send(self, peer: Any, mtype: MsgType, b: dict[str, Any], **kw: Any) -> dict[str, Any]:
        self.sent.append((peer, mtype, b, kw))
        answer = self.answers.pop(0) if self.answers else {"status": "ok"}
        if isinstance(answer, BaseException):
            raise answer
        return dict(answer)

    def close(self) -> None:
        self.closed = True


def agent_with(ep: FakeEndpoint, parts: list[Partition] | None = None) -> UnitAgent:
    agent, _lio, _ = make_agent(parts)
    agent.station = ST1
    agent.endpoint = ep  # type: ignore[assignment]
    return agent


def test_ep_a_unit_agent_takes_both_keys_or_neither() -> None:
    key = generate()
    with pytest.raises(ValueError, match="needs both its own key and the station's, or neither"):
        UnitAgent(UNIT, b"k" * 32, ST1, "10.0.0.1", 3260, object(), list,  # type: ignore[arg-type]
                  signer=Signer(UNIT, key))
    with pytest.raises(ValueError, match="needs both"):
        UnitAgent(UNIT, b"k" * 32, ST1, "10.0.0.1", 3260, object(), list,  # type: ignore[arg-type]
                  station_pin=StationPin(key.public_key()))
    both = UnitAgent(UNIT, b"k" * 32, ST1, "10.0.0.1", 3260, object(), list,  # type: ignore[arg-type]
                     signer=Signer(UNIT, key), station_pin=StationPin(key.public_key()))
    assert both.signer is not None and both.station_pin is not None


def test_gp_the_agents_defaults_and_chap_key() -> None:
    agent = UnitAgent(UNIT, b"k" * 32, ST1, "10.0.0.1", 3261, object(), list,  # type: ignore[arg-type]
                      dns_name="unit-a.san.example")
    assert agent.chap_key == secretbox.derive(b"k" * 32, secretbox.CHAP_WIRE)
    assert (agent.name, agent.key, agent.station, agent.portal_address, agent.portal_port, agent.dns_name) == \
        (UNIT, b"k" * 32, ST1, "10.0.0.1", 3261, "unit-a.san.example")
    assert (agent.announce_timeout, agent.failover_timeout, agent.busy_wait, agent.apply_timeout) == \
        (30.0, 10.0, 5.0, 60.0)
    assert (agent.health, agent.exports_applied, agent.find_stations, agent.notifier) == (("ok", None), 0, None, None)
    assert not agent.announced.is_set()


# --- announcing --------------------------------------------------------------------------------
def test_gp_startup_carries_the_units_identity_and_waits_30_s_for_its_only_station() -> None:
    ep = FakeEndpoint({"status": "ok"})
    agent = agent_with(ep)
    agent.dns_name = "unit-a.san.example"
    asyncio.run(asyncio.wait_for(agent.announce(), 5))
    assert ep.sent == [(ST1, MsgType.STARTUP, {"unit": UNIT, "portal_address": "127.0.0.1", "portal_port": 3260,
                                               "dns_name": "unit-a.san.example", "agent_version": __version__},
                        {"timeout": 30.0, "max_rto": 5.0})]
    assert agent.announced.is_set() and agent.station == ST1


def test_gp_announce_fails_over_to_the_next_station_with_the_shorter_timeout(caplog: pytest.LogCaptureFixture) -> None:
    ep = FakeEndpoint(Unavailable("no answer"), {"status": "ok"})
    agent = agent_with(ep)

    async def stations() -> list[Any]:
        return [ST1, ST2]

    agent.find_stations = stations
    with caplog.at_level(logging.INFO, logger="unit_agent.agent"):
        asyncio.run(asyncio.wait_for(agent.announce(), 5))
    assert [(p, kw["timeout"]) for p, _, _, kw in ep.sent] == [(ST1, 10.0), (ST2, 10.0)]
    assert agent.station == ST2 and agent.announced.is_set()
    assert [r.getMessage() for r in caplog.records] == [
        "station 10.0.0.5:4790 does not answer (no answer); trying the next",
        "station 10.0.0.6:4790 acknowledged our startup"]


def test_ep_a_refused_startup_is_logged_and_tried_again_after_10_s(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEndpoint(Unavailable("no answer"), {"status": "error", "error": "unit is revoked"}, {"status": "ok"})
    agent = agent_with(ep)
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(s: float) -> None:
        slept.append(s)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        asyncio.run(asyncio.wait_for(agent.announce(), 5))
    assert slept == [10]                              # only after the refusal, not after no answer
    assert [p for p, _, _, _ in ep.sent] == [ST1, ST1, ST1]
    assert [r.getMessage() for r in caplog.records] == [
        "station 10.0.0.5:4790 does not answer (no answer); still trying",
        "station 10.0.0.5:4790 refused our startup: unit is revoked"]
    assert agent.announced.is_set()


def test_gp_reannounce_starts_one_announcement_at_a_time() -> None:
    async def scenario() -> None:
        gate = asyncio.Event()
        agent = agent_with(FakeEndpoint())
        calls: list[int] = []

        async def announce() -> None:
            calls.append(1)
            await gate.wait()

        agent.announce = announce  # type: ignore[method-assign]
        agent.announced.set()
        agent.reannounce()
        assert not agent.announced.is_set()
        agent.reannounce()
        await asyncio.sleep(0)
        assert calls == [1]
        gate.set()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        agent.reannounce()
        await asyncio.sleep(0)
        assert calls == [1, 1]

    asyncio.run(scenario())


# --- heartbeats --------------------------------------------------------------------------------
def _beats(agent: UnitAgent, ep: FakeEndpoint, n: int) -> None:
    async def scenario() -> None:
        task = asyncio.ensure_future(agent.heartbeat(0.001))
        for _ in range(2000):
            if len(ep.sent) >= n:
                break
            await asyncio.sleep(0.001)
        task.cancel()

    asyncio.run(scenario())


def test_gp_a_heartbeat_says_the_units_health_and_waits_at_least_a_second() -> None:
    ep = FakeEndpoint({"status": "ok", "state": "online"})
    agent = agent_with(ep)
    agent.health = ("degraded", "a hung disk")
    agent.announced.set()
    reannounced: list[int] = []
    agent.reannounce = lambda: reannounced.append(1)  # type: ignore[method-assign]
    _beats(agent, ep, 1)
    assert ep.sent[0] == (ST1, MsgType.HEARTBEAT, {"unit": UNIT, "health": "degraded",
                                                   "health_detail": "a hung disk"}, {"timeout": 1.0})
    assert reannounced == []


@pytest.mark.parametrize("answer, again", [
    ({"status": "ok", "state": "unreachable"}, True),
    ({"status": "ok"}, True),
    ({"status": "error", "state": "unknown"}, False),
])
def test_gp_a_station_that_forgot_the_unit_gets_a_new_announcement(
        answer: dict[str, Any], again: bool, caplog: pytest.LogCaptureFixture) -> None:
    ep = FakeEndpoint(answer, {"status": "ok", "state": "online"})
    agent = agent_with(ep)
    agent.announced.set()
    reannounced: list[int] = []
    agent.reannounce = lambda: reannounced.append(1)  # type: ignore[method-assign]
    with caplog.at_level(logging.INFO, logger="unit_agent.agent"):
        _beats(agent, ep, 2)
    assert reannounced == ([1] if again else [])
    said = [f"the station holds this unit as {answer.get('state')}: announcing again"] if again else []
    assert caplog.messages == said


def test_ep_unanswered_heartbeats_are_warned_about_once_until_one_is_answered(caplog: pytest.LogCaptureFixture) -> None:
    ep = FakeEndpoint(Unavailable("timeout"), Unavailable("timeout"), {"status": "ok", "state": "online"},
                      Unavailable("timeout"), {"status": "ok", "state": "online"})
    agent = agent_with(ep)
    agent.announced.set()
    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        _beats(agent, ep, 5)
    assert [r.getMessage() for r in caplog.records] == ["heartbeat not acknowledged: timeout"] * 2


def test_gp_no_heartbeat_before_the_unit_is_announced_and_heartbeats_once_it_is() -> None:
    ep = FakeEndpoint()
    agent = agent_with(ep)

    async def scenario() -> None:
        task = asyncio.ensure_future(agent.heartbeat(0.001))
        await asyncio.sleep(0.05)
        assert ep.sent == [] and not task.done()
        agent.announced.set()
        for _ in range(500):
            if ep.sent:
                break
            await asyncio.sleep(0.005)
        task.cancel()
        assert [m for _, m, _, _ in ep.sent][:1] == [MsgType.HEARTBEAT]

    asyncio.run(scenario())


# --- storage info, shutdown, what the unit takes -----------------------------------------------
def test_gp_storage_info_goes_to_the_asking_station_with_every_partition(caplog: pytest.LogCaptureFixture) -> None:
    ep = FakeEndpoint({"status": "ok"})
    agent = agent_with(ep)

    async def scenario() -> None:
        assert await agent.handle(Message(MsgType.NEED_STORAGE_INFO, 1, 0, {}, True), ST2) == {}
        for _ in range(200):
            if ep.sent:
                break
            await asyncio.sleep(0.005)

    with caplog.at_level(logging.INFO, logger="unit_agent.agent"):
        asyncio.run(scenario())
    assert ep.sent == [(ST2, MsgType.STORAGE_INFO, {"unit": UNIT, "partitions": [p.to_wire() for p in PARTS]},
                        {"timeout": 30})]
    assert "storage info (2 partitions) taken by the station: {'status': 'ok'}" in caplog.messages


def test_ep_storage_info_not_taken_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    agent = agent_with(FakeEndpoint(Unavailable("no answer")))
    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        asyncio.run(agent.send_storage_info(ST1))
    assert caplog.messages == ["station did not take our storage info: no answer"]


@pytest.mark.parametrize("mtype", [MsgType.STARTUP, MsgType.HEARTBEAT, MsgType.ACK, MsgType.STORAGE_INFO])
def test_ep_a_unit_refuses_messages_meant_for_the_station(mtype: MsgType) -> None:
    agent = agent_with(FakeEndpoint())
    with pytest.raises(InvalidInput) as e:
        asyncio.run(agent.handle(Message(mtype, 1, 0, {}, True), ST1))
    assert str(e.value) == f"a unit does not take {mtype.name} messages"


@pytest.mark.parametrize("answer, taken", [({"status": "ok"}, True), ({"status": "error"}, False),
                                           (Unavailable("gone"), False)])
def test_gp_shutdown_tells_the_station_and_closes_the_endpoint(answer: Any, taken: bool) -> None:
    ep = FakeEndpoint(answer)
    agent = agent_with(ep)
    stopped: list[int] = []
    agent.wiper.stop = lambda: stopped.append(1)  # type: ignore[method-assign]

    async def scenario() -> bool:
        pending = agent._spawn(asyncio.sleep(30))
        announcing = agent._announcing = asyncio.ensure_future(asyncio.sleep(30))
        ok = await agent.shutdown(timeout=2.5)
        await asyncio.sleep(0)
        assert pending.cancelled() and announcing.cancelled()
        return ok

    assert asyncio.run(scenario()) is taken
    assert ep.sent == [(ST1, MsgType.SHUTDOWN, {"unit": UNIT}, {"timeout": 2.5})]
    assert ep.closed and stopped == [1]


def test_ep_a_shutdown_not_acknowledged_is_logged_and_waits_5_s_by_default(caplog: pytest.LogCaptureFixture) -> None:
    ep = FakeEndpoint(Unavailable("no answer"))
    agent = agent_with(ep)
    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        assert asyncio.run(agent.shutdown()) is False
    assert ep.sent[0][3] == {"timeout": 5.0}
    assert caplog.messages == ["station did not acknowledge our shutdown: no answer"]


# --- link changes ------------------------------------------------------------------------------
class Notifier:
    def __init__(self, fail: bool = False, asynchronous: bool = False) -> None:
        self.sent: list[str] = []
        self.fail, self.asynchronous = fail, asynchronous

    def _send(self, what: str) -> Any:
        self.sent.append(what)
        if self.fail:
            raise OSError("no route to the trap receiver")
        if self.asynchronous:
            return asyncio.sleep(0)
        return None

    def send_link_up(self) -> Any:
        return self._send("up")

    def send_link_down(self) -> Any:
        return self._send("down")


@pytest.mark.parametrize("asynchronous", [False, True])
def test_gp_a_link_change_sends_its_trap_and_a_link_up_announces_again(asynchronous: bool) -> None:
    agent = agent_with(FakeEndpoint())
    agent.notifier = Notifier(asynchronous=asynchronous)
    reannounced: list[int] = []
    agent.reannounce = lambda: reannounced.append(1)  # type: ignore[method-assign]
    asyncio.run(agent._link_changed("eth0", "down"))
    assert (agent.notifier.sent, reannounced) == (["down"], [])
    asyncio.run(agent._link_changed("eth0", "up"))
    assert (agent.notifier.sent, reannounced) == (["down", "up"], [1])


def test_gp_an_async_trap_is_awaited_and_a_notifier_without_a_trap_is_skipped() -> None:
    sent: list[str] = []

    class UpOnly:
        async def send_link_up(self) -> None:
            await asyncio.sleep(0)
            sent.append("up")              # only once awaited

    agent = agent_with(FakeEndpoint())
    agent.notifier = UpOnly()
    reannounced: list[int] = []
    agent.reannounce = lambda: reannounced.append(1)  # type: ignore[method-assign]
    asyncio.run(agent._link_changed("eth0", "down"))  # no send_link_down: nothing sent, no error
    asyncio.run(agent._link_changed("eth0", "up"))
    assert (sent, reannounced) == (["up"], [1])


def test_gp_finished_background_tasks_are_let_go() -> None:
    agent = agent_with(FakeEndpoint())

    async def scenario() -> None:
        task = agent._spawn(asyncio.sleep(0))
        assert task in agent._tasks
        await task
        await asyncio.sleep(0)
        assert agent._tasks == set()

    asyncio.run(scenario())


def test_ep_a_failed_trap_is_logged_and_the_unit_still_announces(caplog: pytest.LogCaptureFixture) -> None:
    agent = agent_with(FakeEndpoint())
    agent.notifier = Notifier(fail=True)
    reannounced: list[int] = []
    agent.reannounce = lambda: reannounced.append(1)  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        asyncio.run(agent._link_changed("eth0", "up"))
        asyncio.run(agent._link_changed("eth1", "down"))
    assert caplog.messages == ["linkUp trap for eth0 failed: no route to the trap receiver",
                               "linkDown trap for eth1 failed: no route to the trap receiver"]
    assert reannounced == [1]


def test_gp_link_changes_reach_the_agents_loop_from_another_thread() -> None:
    agent = agent_with(FakeEndpoint())
    agent.on_link_change("eth0", "up")               # before open(): no loop, nothing happens
    seen: list[tuple[str, str]] = []

    async def changed(ifname: str, change: str) -> None:
        seen.append((ifname, change))

    agent._link_changed = changed  # type: ignore[method-assign]

    async def scenario() -> None:
        agent._loop = asyncio.get_running_loop()
        await asyncio.to_thread(agent.on_link_change, "eth0", "down")
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.005)

    asyncio.run(scenario())
    assert seen == [("eth0", "down")]


# --- the answer to EXPORTS ---------------------------------------------------------------------
def test_gp_the_answer_counts_exports_and_changes_and_lists_refusals_in_order() -> None:
    agent, lio, _ = make_agent()
    bad = {"device": "vdz9", "target_iqn": "iqn.2026-11.org.dvsan:unit-a:vdz9", "initiators": [HOST1],
           "lun": 0, "wwn": "", "extent": PARTS[0].extent.to_wire()}
    ack = asyncio.run(agent.apply_exports(body(export(PARTS[1]), bad, export(PARTS[0]))))
    assert ack == {"exports": 2, "changes": 2, "kept": [],
                   "refused": [{"target_iqn": "iqn.2026-11.org.dvsan:unit-a:vdz9",
                                "reason": "device vdz9 is not offered by this unit (in use, mounted or gone)"}]}
    assert agent.exports_applied == 1
    again = asyncio.run(agent.apply_exports(body(export(PARTS[1]), export(PARTS[0]))))
    assert (again["exports"], again["changes"], agent.exports_applied) == (2, 0, 2)
    lio.logged_in[export(PARTS[0])["target_iqn"]] = 2
    kept = asyncio.run(agent.apply_exports(body()))
    assert kept["kept"] == [{"target_iqn": export(PARTS[0])["target_iqn"],
                             "reason": "2 initiator(s) logged in: not removed without an operator's release"}]
    assert (kept["exports"], kept["changes"]) == (1, 1)


def test_gp_open_binds_a_signing_endpoint_named_for_the_unit_that_writes_to_the_station() -> None:
    key = generate()
    pin = StationPin(key.public_key())
    agent = UnitAgent(UNIT, b"k" * 32, ST1, "127.0.0.1", 3260, object(), list,  # type: ignore[arg-type]
                      signer=Signer(UNIT, key), station_pin=pin)

    async def scenario() -> None:
        await agent.open("127.0.0.1", 0)
        try:
            ep = agent.endpoint
            assert ep is not None and agent._loop is asyncio.get_running_loop()
            assert (ep.name, ep.key, ep.signer, ep.verifier) == (f"unit {UNIT}", b"k" * 32, agent.signer, pin)
            assert ep.recipient is not None and ep.recipient({"unit": UNIT}) == "@station"
            assert ep.handler == agent.handle
        finally:
            if agent.endpoint is not None:
                agent.endpoint.close()

    asyncio.run(scenario())


def test_ep_the_refusal_of_half_an_identity_says_what_is_needed() -> None:
    with pytest.raises(ValueError) as e:
        UnitAgent(UNIT, b"k" * 32, ST1, "10.0.0.1", 3260, object(), list,  # type: ignore[arg-type]
                  signer=Signer(UNIT, generate()))
    assert str(e.value) == "a unit agent needs both its own key and the station's, or neither"


def test_ep_a_push_while_another_runs_is_answered_busy_in_so_many_words() -> None:
    agent, _lio, _ = make_agent()
    agent.busy_wait = 0.01

    async def scenario() -> dict[str, Any] | None:
        await agent._apply_lock.acquire()
        msg = Message(MsgType.EXPORTS, 1, 0, body(export(PARTS[0])), True)
        return await asyncio.wait_for(agent.handle(msg, ST1), 5)   # bounded: busy_wait, not forever

    assert asyncio.run(scenario()) == {"status": "busy", "busy": True,
                                       "error": "unit unit-a is busy: an earlier change is still running"}


def test_ep_exports_for_another_unit_name_both_units() -> None:
    agent, lio, _ = make_agent()
    with pytest.raises(Conflict) as e:
        asyncio.run(agent.apply_exports({**body(export(PARTS[0])), "unit": "unit-b"}))
    assert str(e.value) == "exports for unit 'unit-b' sent to unit 'unit-a'"
    assert lio.applied == []


def test_gp_an_export_with_a_sealed_chap_secret_is_unsealed_with_the_units_key() -> None:
    from dvsan.model import Export
    agent, lio, _ = make_agent()
    e = Export(PARTS[0].device, target_iqn(UNIT, PARTS[0].device), (HOST1,), 0,
               wwn="6a1c5f0e-2b7d-4f7e-9d3a-8e0f5c1d2b41", extent=PARTS[0].extent,
               chap_user="host-user", chap_secret="s3cret-s3cret-0123")
    ack = asyncio.run(agent.apply_exports(body(e.to_wire(agent.chap_key))))
    assert ack["refused"] == [] and ack["exports"] == 1
    [create] = lio.applied
    assert (create.export.chap_user, create.export.chap_secret) == ("host-user", "s3cret-s3cret-0123")


THREE = [*PARTS, Partition("vdb3", "vdb", 3, 10240, 2048, 12287, 512, 2048 * 512, "0c1d2e3f-0000-4000-8000-000000000003")]


@pytest.mark.parametrize("case", ["after-a-wanted-one", "after-a-dropped-one", "after-a-refused-one"])
def test_ep_an_export_with_live_sessions_is_kept_whatever_comes_before_it(case: str) -> None:
    """The keep-or-drop walk over the held exports goes on to the last one: an export with
    initiators logged in, listed after one that is wanted, dropped or refused, is still kept (its
    host's I/O would stop otherwise)."""
    agent, lio, offered = make_agent(THREE)
    first, middle, live = (export(p) for p in THREE)
    assert run(agent, body(first, middle, live))["exports"] == 3
    lio.logged_in[live["target_iqn"]] = 1
    if case == "after-a-wanted-one":
        ack = run(agent, body(first, generation=2))
    elif case == "after-a-dropped-one":
        ack = run(agent, body(generation=2, drop=[first["target_iqn"], middle["target_iqn"]]))
    else:
        offered.remove(THREE[0])          # vdb1 is gone: its export is refused and left as it is
        ack = run(agent, body(first, generation=2))
    assert live["target_iqn"] in held(lio), f"{case}: an export with a live session was removed"
    assert {k["target_iqn"] for k in ack["kept"]} >= {live["target_iqn"]}, ack


# --- what a refused export does to the export already held under its name ---------------------
T1, T2 = export(PARTS[0])["target_iqn"], export(PARTS[1])["target_iqn"]


def _holding_t1(live: bool = True) -> tuple[UnitAgent, Any, list[Partition]]:
    agent, lio, offered = make_agent()
    assert run(agent, body(export(PARTS[0]), export(PARTS[1])))["refused"] == []
    if live:
        lio.logged_in[T1] = 1
    return agent, lio, offered


@pytest.mark.parametrize("case", ["wrong-name", "device-gone", "no-extent"])
def test_ep_a_refusal_that_says_nothing_of_the_device_leaves_its_held_export_as_it_is(case: str) -> None:
    """A refusal for a reason other than "the device is now another extent" leaves the export held
    under that name exactly as it is (a host may be on it), and says so in the answer."""
    agent, lio, offered = _holding_t1(live=False)
    bad = export(PARTS[0])
    if case == "wrong-name":
        bad = export(PARTS[1], target_iqn=T1)              # T1 names vdb1, not vdb2
    elif case == "device-gone":
        offered.remove(PARTS[0])
    else:
        del bad["extent"]
    ack = run(agent, body(bad, export(PARTS[1]), generation=2))
    assert held(lio) == {T1: (HOST1,), T2: (HOST1,)}, f"{case}: the held export was touched"
    assert ack["kept"] == [{"target_iqn": T1, "reason": "left as it is"}]
    assert [r["target_iqn"] for r in ack["refused"]] == [T1]
    assert (ack["exports"], ack["changes"]) == (2, 0)


def test_ep_a_device_that_is_now_another_extent_loses_its_export_even_under_a_live_host() -> None:
    agent, lio, offered = _holding_t1(live=True)
    offered[0] = Partition("vdb1", "vdb", 1, 4096, 2048, 6143, 512, 2048 * 512, PARTS[0].extent.uid)
    ack = run(agent, body(export(PARTS[0]), export(PARTS[1]), generation=2))
    assert held(lio) == {T2: (HOST1,)}
    assert ack["kept"] == [] and (ack["exports"], ack["changes"]) == (1, 1)


def test_ep_each_refusal_says_why_in_so_many_words() -> None:
    agent, _lio, offered = make_agent()
    offered[1] = Partition("vdb2", "vdb", 2, 6144, 2048, 8191, 512, 2048 * 512,
                           "99999999-0000-4000-8000-000000000002")
    gone = export(PARTS[0], device="vdz9", target_iqn="iqn.2026-11.org.dvsan:unit-a:vdz9")
    foreign = export(PARTS[0], target_iqn="iqn.2026-11.org.dvsan:unit-b:vdb1")
    bare = export(PARTS[0])
    del bare["extent"]
    ack = run(agent, body(gone, foreign, bare, export(PARTS[1])))
    assert ack["refused"] == [
        {"target_iqn": T1, "reason": "the export carries no extent to check the device against"},
        {"target_iqn": target_iqn(UNIT, "vdb2"),
         "reason": "device vdb2: partition identity changed: expected 0c1d2e3f-0000-4000-8000-000000000002, "
                   "the disk now has 99999999-0000-4000-8000-000000000002"},
        {"target_iqn": "iqn.2026-11.org.dvsan:unit-a:vdz9",
         "reason": "device vdz9 is not offered by this unit (in use, mounted or gone)"},
        {"target_iqn": "iqn.2026-11.org.dvsan:unit-b:vdb1",
         "reason": "target iqn.2026-11.org.dvsan:unit-b:vdb1 does not follow this unit's naming"}]
    assert ack["exports"] == 0


def test_ep_a_malformed_export_is_refused_under_its_target_name_or_its_position() -> None:
    agent, lio, _ = make_agent()
    named = export(PARTS[0], lun="zero")
    ack = run(agent, body(named, {"target_iqn": 7, "device": "vdb2"}, ["not", "an", "object"],  # type: ignore[arg-type]
                          export(PARTS[1])))
    refused = {r["target_iqn"]: r["reason"] for r in ack["refused"]}
    assert sorted(refused) == ["#1", "#2", T1]
    assert all(r.startswith("malformed export: ") and len(r) > len("malformed export: ") for r in refused.values())
    assert held(lio) == {T2: (HOST1,)}


@pytest.mark.parametrize("bad, words", [
    ({"exports": "all"}, "field 'exports' must be a list"),
    ({"exports": None}, "field 'exports' must be a list"),
    ({"drop": "x"}, "field 'drop' must be a list of target names"),
    ({"drop": [1]}, "field 'drop' must be a list of target names"),
])
def test_ep_a_malformed_message_is_refused_whole_in_so_many_words(bad: dict[str, Any], words: str) -> None:
    agent, lio, _ = make_agent()
    with pytest.raises(InvalidInput) as e:
        run(agent, {**body(export(PARTS[0])), **bad})
    assert str(e.value) == words
    assert lio.applied == [] and agent.exports_applied == 0


def test_gp_a_message_without_drop_drops_nothing_under_a_live_host() -> None:
    agent, lio, _ = _holding_t1(live=True)
    b = body(export(PARTS[1]), generation=2)
    assert "drop" not in b
    run(agent, b)
    assert T1 in held(lio)


# --- a change stuck in the kernel --------------------------------------------------------------
class StuckLio:
    """Like FakeLio, but `apply` blocks until `gate` is set, then fails or returns."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.gate = threading.Event()
        self.fail = fail
        self.calls = 0

    def actual_exports(self) -> list[Any]:
        return []

    def sessions(self, target: str) -> int:
        return 0

    def apply(self, actions: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            self.gate.wait(30)
        if self.fail is not None:
            raise self.fail


async def _until(cond: Any, what: str) -> None:
    for _ in range(500):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("fail", [None, OSError("EIO on /dev/vdb1")])
def test_ep_a_hung_change_says_degraded_and_busy_in_so_many_words_then_clears(
        fail: BaseException | None, caplog: pytest.LogCaptureFixture) -> None:
    agent, _lio, _ = make_agent()
    lio = agent.lio = StuckLio(fail)  # type: ignore[assignment]
    agent.apply_timeout, agent.busy_wait = 0.2, 0.05
    detail = "a change of 1 LIO operation(s) has run for over 0 s (a hung disk?)"

    async def scenario() -> None:
        try:
            with pytest.raises(Busy) as e:
                await asyncio.wait_for(agent.apply_exports(body(export(PARTS[0]))), 10)
            assert str(e.value) == f"unit unit-a is busy: {detail}"
            assert agent.health == ("degraded", detail)
            assert agent._apply_lock.locked(), "the lock must stay held while the kernel write runs"
            reply = await agent.handle(Message(MsgType.EXPORTS, 1, 0, body(export(PARTS[1])), True), ST1)
            assert reply == {"status": "busy", "busy": True, "error": f"unit unit-a is busy: {detail}"}
            assert lio.calls == 1
        finally:
            lio.gate.set()
        await _until(lambda: agent.health == ("ok", None) and not agent._apply_lock.locked(), "recovery")

    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        asyncio.run(scenario())
    assert f"unit unit-a: {detail}" in caplog.messages
    ended = "unit unit-a: the stuck LIO change ended" + (f" with an error: {fail}" if fail else "")
    assert caplog.messages[-1] == ended


def test_ep_lios_failures_are_joined_into_one_adapter_error_and_the_lock_is_released() -> None:
    agent, _lio, _ = make_agent()
    lio = agent.lio = StuckLio(ExceptionGroup("2 failed", [AdapterError("cannot create export A"),
                                                         AdapterError("cannot delete backstore B")]))
    lio.calls = 1                                            # do not hang
    with pytest.raises(AdapterError) as e:
        run(agent, body(export(PARTS[0])))
    assert str(e.value) == "cannot create export A; cannot delete backstore B"
    assert isinstance(e.value.__cause__, ExceptionGroup)
    assert not agent._apply_lock.locked() and agent.exports_applied == 0


def test_gp_an_applied_push_is_logged_with_its_counts_and_refusals(caplog: pytest.LogCaptureFixture) -> None:
    agent, _lio, _ = _holding_t1(live=True)
    gone = export(PARTS[0], device="vdz9", target_iqn="iqn.2026-11.org.dvsan:unit-a:vdz9")
    with caplog.at_level(logging.INFO, logger="unit_agent.agent"):
        run(agent, body(gone, generation=2))
    assert caplog.messages == [
        f"keeping export {T1}: 1 initiator(s) logged in: not removed without an operator's release",
        "applied 1 change(s); 1 export(s) now held",
        ("refused export iqn.2026-11.org.dvsan:unit-a:vdz9: device vdz9 is not offered by this unit "
         "(in use, mounted or gone)")]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="unit_agent.agent"):
        run(agent, body(generation=3))                      # nothing to change: no "applied" line
    assert [m for m in caplog.messages if m.startswith("applied")] == []


# --- the port the agent listens on -------------------------------------------------------------
def test_gp_open_listens_on_the_port_it_is_given() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = UnitAgent(UNIT, b"k" * 32, ST1, "127.0.0.1", 3260, object(), list)  # type: ignore[arg-type]

    async def scenario() -> None:
        await agent.open("127.0.0.1", port)
        try:
            assert agent.endpoint is not None and agent.endpoint.address == ("127.0.0.1", port)
        finally:
            agent.endpoint.close()  # type: ignore[union-attr]

    asyncio.run(scenario())


def test_gp_a_stuck_change_cancelled_at_shutdown_still_frees_the_lock_and_the_health(
        caplog: pytest.LogCaptureFixture) -> None:
    agent, _lio, _ = make_agent()

    async def scenario() -> None:
        await agent._apply_lock.acquire()
        agent.health = ("degraded", "a change of 1 LIO operation(s) has run for over 60 s (a hung disk?)")
        task: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task.cancel()
        agent._stuck_apply_ended(task)
        assert not agent._apply_lock.locked() and agent.health == ("ok", None)

    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        asyncio.run(scenario())
    assert caplog.messages == ["unit unit-a: the stuck LIO change ended"]


# --- monitoring samples (STATS) ----------------------------------------------------------------
def _reports(agent: UnitAgent, ep: FakeEndpoint, sample: Any, n: int, interval: float,
             monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = asyncio.sleep

    async def fast_sleep(s: float) -> None:        # the interval is only a number to the agent
        await real_sleep(0.001)

    monkeypatch.setattr(asyncio, "sleep", fast_sleep)

    async def scenario() -> None:
        task = asyncio.ensure_future(agent.report_stats(interval, sample))
        for _ in range(2000):
            if len(ep.sent) >= n:
                break
            await real_sleep(0.001)
        task.cancel()

    asyncio.run(scenario())


@pytest.mark.parametrize("interval, timeout", [(0.2, 1.0), (5.0, 5.0), (60.0, 10.0)])
def test_gp_each_part_of_a_sample_goes_to_the_station_with_a_bounded_wait(
        interval: float, timeout: float, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEndpoint()
    agent = agent_with(ep)
    agent.announced.set()
    parts = [{"unit": UNIT, "part": 1}, {"unit": UNIT, "part": 2}]
    _reports(agent, ep, lambda: parts, 2, interval, monkeypatch)
    assert [(p, m, b, kw) for p, m, b, kw in ep.sent[:2]] == [
        (ST1, MsgType.STATS, parts[0], {"timeout": timeout}), (ST1, MsgType.STATS, parts[1], {"timeout": timeout})]


def test_gp_no_sample_is_taken_before_the_unit_is_announced(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEndpoint()
    agent = agent_with(ep)
    taken: list[int] = []

    def sample() -> list[dict[str, Any]]:
        taken.append(1)
        return [{"unit": UNIT}]

    real_sleep = asyncio.sleep

    async def scenario() -> None:
        task = asyncio.ensure_future(agent.report_stats(0.001, sample))
        await real_sleep(0.05)
        assert (taken, ep.sent, task.done()) == ([], [], False)
        agent.announced.set()
        for _ in range(500):
            if ep.sent:
                break
            await real_sleep(0.005)
        task.cancel()
        assert taken and ep.sent

    asyncio.run(scenario())


@pytest.mark.parametrize("answer, said", [
    ({"status": "error", "error": "unknown unit"}, "unknown unit"),
    ({"status": "ok", "refused": [{"device": "vdz9", "reason": "no such volume"}]},
     "[{'device': 'vdz9', 'reason': 'no such volume'}]"),
])
def test_ep_a_refused_sample_is_warned_about(answer: dict[str, Any], said: str, caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEndpoint(answer)
    agent = agent_with(ep)
    agent.announced.set()
    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        _reports(agent, ep, lambda: [{"unit": UNIT}], 2, 1.0, monkeypatch)
    assert caplog.messages == [f"stats: the station refused (part of) our sample: {said}"]


def test_ep_undelivered_samples_are_warned_about_once_until_one_goes_through(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = FakeEndpoint(Unavailable("timeout"), Unavailable("timeout"), {"status": "ok"}, {"status": "ok"},
                      Unavailable("timeout"), {"status": "ok"})
    agent = agent_with(ep)
    agent.announced.set()
    calls: list[int] = []

    def sample() -> list[dict[str, Any]]:
        calls.append(1)
        if len(calls) == 4:
            raise AdapterError("cannot read LIO's configfs")
        return [{"unit": UNIT}]

    with caplog.at_level(logging.WARNING, logger="unit_agent.agent"):
        _reports(agent, ep, sample, 6, 1.0, monkeypatch)
    assert caplog.messages == ["stats not delivered: timeout", "stats not delivered: cannot read LIO's configfs",
                               "stats not delivered: timeout"]
