"""Per-unit identities against the real station process: a unit holding the cluster key and valid
credentials of its own can neither change another unit's exports nor speak under another unit's
name; revoked units, second machines and unapproved units are refused; pending -> approve -> in.

The units are the real UnitAgent protocol loop (in-memory LIO), as in test_station_autoconf.py.
"""

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from dvsan.endpoint import Endpoint
from dvsan.identity import STATION, Signer, encode_public, fingerprint, generate, load_or_create
from dvsan.protocol import MsgType, decode, encode
from tests.component.test_station_autoconf import (
    PARTS,
    UnitHarness,
    online,
    request,
    volumes,
    wait_for,
)


def post(station: Any, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(station.url + path, headers=station.auth, timeout=10, **kw)


def identity(station: Any, name: str) -> dict[str, Any]:
    return station.get(f"/api/v1/enrolment/{name}").json()  # type: ignore[no-any-return]


def unit_row(station: Any, name: str) -> dict[str, Any]:
    return station.get(f"/api/v1/units/{name}").json()  # type: ignore[no-any-return]


def control(u: UnitHarness) -> tuple[str, int]:
    assert u.agent.endpoint is not None
    return u.agent.endpoint.address


def record_datagrams(u: UnitHarness) -> list[bytes]:
    """Every datagram the unit's endpoint receives, as it arrives (what a sniffer would see)."""
    seen: list[bytes] = []
    ep = u.agent.endpoint
    assert ep is not None
    real = ep.datagram_received

    def tap(data: bytes, addr: Any) -> None:
        seen.append(data)
        real(data, addr)

    ep.datagram_received = tap  # type: ignore[method-assign]
    return seen


def station_exports(station: Any, seen: list[bytes]) -> list[tuple[int, dict[str, Any]]]:
    """(seq, signed body) of the station's EXPORTS among captured datagrams (one fragment each)."""
    out = []
    for d in list(seen):
        f = decode(station.key, d)
        if f.type == MsgType.EXPORTS and f.frag_count == 1:
            out.append((f.seq, json.loads(f.payload)))
    return out


def resend(station: Any, captured: tuple[int, dict[str, Any]], to: tuple[str, int]) -> None:
    """What a holder of the cluster key can do with a captured message: the same seq and signed
    body in a fresh datagram (fresh nonce and timestamp), from another port."""
    import socket

    seq, body = captured
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(encode(station.key, MsgType.EXPORTS, seq, body)[0], to)


def send_as(u: UnitHarness, signer: Signer | None, peer: tuple[str, int], mtype: MsgType,
            body: dict[str, Any], to: str = STATION) -> dict[str, Any]:
    """Send from a fresh endpoint of the attacker's machine, signed by `signer` (None: unsigned)."""
    async def go() -> dict[str, Any]:
        ep = await Endpoint.open(u.agent.key, lambda m, p: asyncio.sleep(0), "127.0.0.1", 0,
                                 signer=signer, recipient=lambda _b: to)
        try:
            return await ep.send(peer, mtype, body, timeout=5)
        finally:
            ep.close()

    return u.call(go())  # type: ignore[no-any-return]


def stats(u: UnitHarness) -> dict[str, int]:
    assert u.agent.endpoint is not None
    return dict(u.agent.endpoint.stats)


# --- a peer unit cannot move another unit's exports --------------------------------------------
def test_ep_peer_unit_cannot_forge_or_replay_station_exports_to_another_unit(station):
    a = UnitHarness(station, "unit-a", parts=PARTS[:1])       # the attacker: cluster key + its own key
    b = UnitHarness(station, "unit-b")
    try:
        seen_a, seen_b = record_datagrams(a), record_datagrams(b)
        a.start()
        b.start()
        online(station, 4)
        wait_for(lambda: b.agent.exports_applied >= 1 and a.agent.exports_applied >= 1)
        boot_exports_b = station_exports(station, seen_b)[0]         # b's empty desired state at boot
        r = request(station, "1GiB")
        assert r.status_code == 201 and r.json()["unit"] == "unit-b", r.text
        target = r.json()["target_iqn"]
        held = dict(b.lio.exports)
        assert list(held) == [target]
        applied = b.agent.exports_applied
        latest_b = station_exports(station, seen_b)[-1]
        exports_a = station_exports(station, seen_a)[-1]
        wipe = {"unit": "unit-b", "exports": [], "portal_address": "127.0.0.1"}
        key_a = a.agent.signer.key  # type: ignore[union-attr]

        # 1. signed by unit-a as itself: a unit takes messages from the station only
        ack = send_as(a, a.agent.signer, control(b), MsgType.EXPORTS, wipe, to="unit-b")
        assert (ack["status"], ack["refusal"]) == ("error", "not-station"), ack
        # 2. calling itself the station, signed with unit-a's key
        ack = send_as(a, Signer(STATION, key_a), control(b), MsgType.EXPORTS, wipe, to="unit-b")
        assert (ack["status"], ack["refusal"]) == ("error", "bad-signature"), ack
        # 3. the cluster key alone (no identity at all)
        ack = send_as(a, None, control(b), MsgType.EXPORTS, wipe, to="unit-b")
        assert (ack["status"], ack["refusal"]) == ("error", "unsigned"), ack
        # 4. a captured station-signed EXPORTS for unit-a, re-sent to unit-b in a fresh datagram
        before = stats(b).get("refused", 0)
        resend(station, exports_a, control(b))
        wait_for(lambda: stats(b).get("refused", 0) == before + 1)
        assert stats(b).get("refused_misaddressed") == 1
        # 5. b's own station-signed EXPORTS, replayed to b: the latest, and the one from boot
        #    that would take the new export away again
        resend(station, latest_b, control(b))
        resend(station, boot_exports_b, control(b))
        wait_for(lambda: stats(b).get("refused", 0) == before + 3)
        assert stats(b).get("refused_replayed") == 2
        # ...and the captured EXPORTS for unit-a, replayed to unit-a itself
        before_a = stats(a).get("refused", 0)
        resend(station, exports_a, control(a))
        wait_for(lambda: stats(a).get("refused", 0) == before_a + 1)
        assert stats(a).get("refused_replayed") == 1

        assert b.lio.exports == held and b.agent.exports_applied == applied
        assert b.lio.exports[target].initiators == ("iqn.2026-11.org.dvsan.lab:host-b",)
        # the station still reaches b: a release goes through and is confirmed
        rel = httpx.delete(f"{station.url}/api/v1/assignments/{r.json()['id']}?wait=60", headers=station.auth, timeout=30)
        assert rel.status_code == 200 and rel.json()["unit_confirmed"] is True
    finally:
        a.close()
        b.close()


# --- a unit speaks only for itself -------------------------------------------------------------
def test_ep_unit_cannot_announce_heartbeat_shutdown_or_report_storage_for_another(station):
    a = UnitHarness(station, "unit-a", parts=PARTS[:1])
    b = UnitHarness(station, "unit-b")
    try:
        a.start()
        b.start()
        online(station, 4)
        pool_before, b_before = volumes(station), unit_row(station, "unit-b")
        st = ("127.0.0.1", station.udp_port)
        forged = [
            (MsgType.STARTUP, {"unit": "unit-b", "portal_address": "10.66.0.1", "portal_port": 3260,
                               "dns_name": None, "agent_version": "evil"}),
            (MsgType.HEARTBEAT, {"unit": "unit-b", "health": "degraded", "health_detail": "forged"}),
            (MsgType.STORAGE_INFO, {"unit": "unit-b", "partitions": []}),
            (MsgType.SHUTDOWN, {"unit": "unit-b"}),
        ]
        for mtype, body in forged:
            ack = send_as(a, a.agent.signer, st, mtype, body)
            assert ack["status"] == "error" and "unit unit-a may not speak for unit unit-b" in ack["error"], ack
        # ...nor by signing as unit-b with its own key: another key under an enrolled name
        impostor = Signer("unit-b", a.agent.signer.key)  # type: ignore[union-attr]
        for mtype, body in forged:
            ack = send_as(a, impostor, st, mtype, body)
            assert (ack["status"], ack["refusal"]) == ("error", "key-mismatch"), ack
        assert volumes(station) == pool_before
        after = unit_row(station, "unit-b")
        for k in ("state", "control_host", "control_port", "portal_address", "agent_version", "health"):
            assert after[k] == b_before[k], k
        rep = identity(station, "unit-b")
        assert rep["state"] == "enrolled" and rep["fingerprint"] == fingerprint(b.agent.signer.key)  # type: ignore[union-attr]
        assert rep["offered_fingerprint"] == fingerprint(a.agent.signer.key) and rep["refused_count"] == 4  # type: ignore[union-attr]
        # b itself still speaks for itself
        assert b.stop() is True
        assert unit_row(station, "unit-b")["state"] == "offline"
    finally:
        a.close()
        b.close()


def test_ep_second_machine_under_an_enrolled_name_is_refused_and_reported(station):
    b = UnitHarness(station, "unit-b")
    other = UnitHarness(station, "unit-b", signer=Signer("unit-b", generate()))   # another machine
    try:
        b.start()
        online(station, 3)
        b_before, pool_before = unit_row(station, "unit-b"), volumes(station)
        fut = asyncio.run_coroutine_threadsafe(other.agent.announce(), other.loop)
        rep = wait_for(lambda: (r := identity(station, "unit-b"))["refused_count"] >= 1 and r)
        assert rep["state"] == "enrolled"
        assert rep["fingerprint"] == fingerprint(b.agent.signer.key)  # type: ignore[union-attr]
        assert rep["offered_fingerprint"] == fingerprint(other.agent.signer.key)  # type: ignore[union-attr]
        assert rep["offered_address"] == "127.0.0.1" and rep["offered_at"]
        assert not fut.done() and not other.agent.announced.is_set()      # refused: it keeps asking
        after = unit_row(station, "unit-b")
        assert (after["control_port"], after["state"]) == (b_before["control_port"], "online")
        assert volumes(station) == pool_before
        assert "is enrolled with another key" in (station.log.read_text())
        fut.cancel()
    finally:
        b.close()
        other.close()


# --- revocation --------------------------------------------------------------------------------
def test_ep_revoked_unit_is_refused_and_its_volumes_go_offline(station):
    b = UnitHarness(station, "unit-b")
    try:
        b.start()
        online(station, 3)
        r = post(station, "/api/v1/enrolment/unit-b/revoke")
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["volumes_offline"]) == ("revoked", 3)
        assert {v["state"] for v in volumes(station)} == {"offline"}
        st = ("127.0.0.1", station.udp_port)
        for mtype, body in [(MsgType.HEARTBEAT, {"unit": "unit-b"}),
                            (MsgType.STARTUP, b.agent._identity()),
                            (MsgType.STORAGE_INFO, {"unit": "unit-b", "partitions": [p.to_wire() for p in PARTS]})]:
            ack = send_as(b, b.agent.signer, st, mtype, body)
            assert (ack["status"], ack["refusal"]) == ("error", "revoked"), ack
        assert {v["state"] for v in volumes(station)} == {"offline"}
        assert unit_row(station, "unit-b")["state"] == "offline"
        # its key never comes back; an unknown unit under the name waits for the operator
        fp = fingerprint(b.agent.signer.key)  # type: ignore[union-attr]
        r = post(station, "/api/v1/enrolment/unit-b/approve", json={"fingerprint": fp})
        assert r.status_code == 409 and "never accepted again" in r.json()["detail"]
        assert post(station, "/api/v1/enrolment/unit-b/revoke").status_code == 200   # twice: no change
        assert post(station, "/api/v1/enrolment/nobody/revoke").status_code == 404
    finally:
        b.close()


# --- manual enrolment --------------------------------------------------------------------------
@pytest.mark.station_args("--enrolment", "manual")
def test_gp_pending_unit_is_admitted_once_an_operator_approves_its_fingerprint(station):
    u = UnitHarness(station, "unit-p")
    try:
        fut = asyncio.run_coroutine_threadsafe(u.agent.announce(), u.loop)
        pending = wait_for(lambda: station.get("/api/v1/enrolment?state=pending").json())
        fp = fingerprint(u.agent.signer.key)  # type: ignore[union-attr]
        assert [(p["name"], p["fingerprint"], p["first_address"]) for p in pending] == [("unit-p", fp, "127.0.0.1")]
        assert volumes(station) == [] and station.get("/api/v1/units").json() == []
        assert station.get("/api/v1/enrolment/station-key").json()["policy"] == "manual"
        # bad approvals change nothing
        wrong = post(station, "/api/v1/enrolment/unit-p/approve", json={"fingerprint": fingerprint(generate())})
        assert wrong.status_code == 409 and f"it offers {fp}" in wrong.json()["detail"]
        assert post(station, "/api/v1/enrolment/unit-p/approve", json={}).status_code == 422
        assert post(station, "/api/v1/enrolment/unit-p/approve",
                    json={"fingerprint": fp, "extra": 1}).status_code == 422
        assert post(station, "/api/v1/enrolment/ghost/approve", json={"fingerprint": fp}).status_code == 404
        assert station.get("/api/v1/enrolment?state=bogus").status_code == 422
        assert identity(station, "unit-p")["state"] == "pending" and not fut.done()
        ok = post(station, "/api/v1/enrolment/unit-p/approve", json={"fingerprint": fp})
        assert ok.status_code == 200 and ok.json()["state"] == "enrolled"
        fut.result(30)                              # the agent's next announcement is taken
        online(station, 3)
        assert identity(station, "unit-p")["enrolled_at"]
    finally:
        u.close()


@pytest.mark.station_args("--enrolment", "manual")
def test_gp_pre_enrolled_unit_is_admitted_at_once_and_pending_can_be_forgotten(station):
    key, _ = load_or_create(station.data_dir.parent / "unit-unit-e" / "unit.key")   # where UnitHarness keeps it
    r = httpx.put(f"{station.url}/api/v1/enrolment/unit-e/key", headers=station.auth, json={"public_key": encode_public(key)}, timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "enrolled"
    assert httpx.put(f"{station.url}/api/v1/enrolment/unit-e/key", headers=station.auth, json={"public_key": "nope"},
                     timeout=10).status_code == 422
    u = UnitHarness(station, "unit-e")
    stranger = UnitHarness(station, "unit-x")
    try:
        u.start()
        online(station, 3)
        fut = asyncio.run_coroutine_threadsafe(stranger.agent.announce(), stranger.loop)
        wait_for(lambda: station.get("/api/v1/enrolment?state=pending").json())
        assert httpx.delete(f"{station.url}/api/v1/enrolment/unit-e", headers=station.auth, timeout=10).status_code == 409
        assert httpx.delete(f"{station.url}/api/v1/enrolment/unit-x", headers=station.auth, timeout=10).status_code == 204
        fut.cancel()
        assert [x["name"] for x in station.get("/api/v1/units").json()] == ["unit-e"]
    finally:
        u.close()
        stranger.close()


# --- rotation ----------------------------------------------------------------------------------
def test_gp_unit_rotates_its_key_signed_by_the_old_one(station):
    u = UnitHarness(station, "unit-r")
    try:
        u.start()
        online(station, 3)
        old = u.agent.signer.key  # type: ignore[union-attr]
    finally:
        u.close()
    rotated: list[int] = []
    new = Signer("unit-r", generate(), previous=old, on_rotated=lambda: rotated.append(1))
    u2 = UnitHarness(station, "unit-r", signer=new)
    try:
        u2.start()
        online(station, 3)
        rep = identity(station, "unit-r")
        assert rep["fingerprint"] == fingerprint(new.key) and rep["rotated_at"] and rep["refused_count"] == 0
        assert new.previous is None and rotated == [1]
    finally:
        u2.close()
    # the old key is no longer the unit's
    u3 = UnitHarness(station, "unit-r", signer=Signer("unit-r", old))
    try:
        ack = send_as(u3, u3.agent.signer, ("127.0.0.1", station.udp_port), MsgType.HEARTBEAT, {"unit": "unit-r"})
        assert (ack["status"], ack["refusal"]) == ("error", "key-mismatch")
    finally:
        u3.close()


def test_gp_operator_reapproves_a_new_key_offered_without_the_old_ones_signature(station):
    u = UnitHarness(station, "unit-n")
    try:
        u.start()
        online(station, 3)
    finally:
        u.close()
    fresh = Signer("unit-n", generate())          # the unit's disk was replaced: the old key is lost
    u2 = UnitHarness(station, "unit-n", signer=fresh)
    try:
        fut = asyncio.run_coroutine_threadsafe(u2.agent.announce(), u2.loop)
        wait_for(lambda: identity(station, "unit-n")["offered_fingerprint"] == fingerprint(fresh.key))
        r = post(station, "/api/v1/enrolment/unit-n/approve", json={"fingerprint": fingerprint(fresh.key)})
        assert r.status_code == 200 and r.json()["fingerprint"] == fingerprint(fresh.key)
        assert r.json()["offered_fingerprint"] is None and r.json()["rotated_at"]
        fut.result(30)
        online(station, 3)
    finally:
        u2.close()


# --- the station's key, the unit agent's key commands ------------------------------------------
def test_gp_station_key_is_made_once_kept_0600_and_published(station):
    priv = station.data_dir / "station_identity.key"
    pub = (station.data_dir / "station_identity.pub").read_text().strip()
    assert os.stat(priv).st_mode & 0o777 == 0o600
    got = station.get("/api/v1/enrolment/station-key").json()
    assert got["public_key"] == pub and got["policy"] == "first-come"
    station.stop()
    station.start()
    assert station.get("/api/v1/enrolment/station-key").json()["public_key"] == pub


def test_ep_station_refuses_to_start_with_a_private_key_others_can_read(station):
    station.stop()
    os.chmod(station.data_dir / "station_identity.key", 0o644)
    with pytest.raises(RuntimeError, match="accessible by group or others"):
        station.start()


def _unit_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unit_agent.cli", "--name", "unit-k",
                           "--state-dir", str(tmp_path / "state"), *args],
                          check=False, capture_output=True, text=True, timeout=60)


def test_gp_unit_agent_shows_and_rotates_its_key(tmp_path):
    shown = _unit_cli(tmp_path, "--show-key")
    assert shown.returncode == 0, shown.stderr
    fp = next(line.split()[1] for line in shown.stdout.splitlines() if line.startswith("fingerprint"))
    key = tmp_path / "state" / "unit.key"
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert _unit_cli(tmp_path, "--show-key").stdout == shown.stdout          # the same key again
    rot = _unit_cli(tmp_path, "--rotate-key")
    assert rot.returncode == 0 and f"old {fp}" in rot.stdout
    assert (tmp_path / "state" / "unit.key.prev").exists()
    again = _unit_cli(tmp_path, "--rotate-key")
    assert again.returncode == 2 and "already under way" in again.stderr


def test_ep_unit_agent_without_a_station_key_refuses_to_start(tmp_path):
    (tmp_path / "cluster.key").write_text(os.urandom(16).hex())
    (tmp_path / "cluster.key").chmod(0o600)      # a key file others may read is refused
    t0 = time.monotonic()
    r = _unit_cli(tmp_path, "--station", "127.0.0.1:9", "--cluster-key-file", str(tmp_path / "cluster.key"),
                  "--no-link-watch")
    assert r.returncode == 2 and "no station key" in r.stderr and "--station-trust first-contact" in r.stderr
    assert time.monotonic() - t0 < 30
