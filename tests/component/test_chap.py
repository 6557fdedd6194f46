"""One-way CHAP on every export (issue 6), at the real station over loopback with the real unit
agent loop: credentials made per assignment, handed to its host (and operators) only, sealed in
the EXPORTS datagrams and in the database, held by the unit's (in-memory) LIO."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from dvsan import secretbox
from dvsan.endpoint import Endpoint
from tests.component.test_auth import IQN_B, call, host_token, user_token
from tests.component.test_station_autoconf import UnitHarness, online


def raw_datagrams(u: UnitHarness) -> list[bytes]:
    """Every datagram the unit's endpoint receives, as bytes off the socket."""
    seen: list[bytes] = []
    ep: Endpoint = u.agent.endpoint  # type: ignore[assignment]
    received = ep.datagram_received

    def tap(data: bytes, addr: Any) -> None:
        seen.append(bytes(data))
        received(data, addr)

    ep.datagram_received = tap  # type: ignore[method-assign]
    return seen


def test_gp_each_assignment_has_its_own_chap_held_by_the_unit_and_sealed_everywhere_else(station, tmp_path):
    u = UnitHarness(station)
    wire = raw_datagrams(u)
    try:
        u.start()
        online(station, 3)
        tb = host_token(station, tmp_path, "host-b", IQN_B)
        r = call(station, "POST", "/api/v1/assignments?wait=60", tb,
                 json={"host": "host-b", "initiator_iqn": IQN_B, "host_address": "127.0.0.2", "size": "100M"})
        assert r.status_code == 201, r.text
        a = r.json()
        user, secret = a["chap_user"], a["chap_secret"]
        assert user.startswith("dvsan-") and len(secret) >= 12
        # the unit's LIO holds exactly those credentials on the export
        held = u.lio.exports[a["target_iqn"]]
        assert (held.chap_user, held.chap_secret) == (user, secret)
        assert secret not in repr(held)
        # the secret crossed the network only sealed; nor does it rest in the database in plain
        assert wire and not any(secret.encode() in d for d in wire)
        assert any(user.encode() in d for d in wire)
        db = (station.data_dir / "station.db").read_bytes() + b"".join(
            p.read_bytes() for p in station.data_dir.glob("station.db-*"))
        assert secret.encode() not in db
        row = sqlite3.connect(station.data_dir / "station.db").execute(
            "select chap_user, chap_secret_sealed from assignments").fetchone()
        assert row[0] == user and row[1] and secret not in row[1]
        # the host and an operator see the secret; a viewer sees only that there is one
        assert call(station, "GET", f"/api/v1/assignments/{a['id']}", tb).json()["chap_secret"] == secret
        assert station.get(f"/api/v1/assignments/{a['id']}").json()["chap_secret"] == secret
        viewer = user_token(station, "vera", "viewer")
        seen = call(station, "GET", f"/api/v1/assignments/{a['id']}", viewer).json()
        assert seen["chap_user"] == user and seen["chap_secret"] is None
        # a second assignment gets other credentials
        b = call(station, "POST", "/api/v1/assignments?wait=60", tb,
                 json={"host": "host-b", "initiator_iqn": IQN_B, "host_address": "127.0.0.2", "size": "100M"}).json()
        assert b["chap_user"] != user and b["chap_secret"] != secret
        # the station's log holds neither secret
        station.stop()
        log = station.log.read_text()
        assert secret not in log and b["chap_secret"] not in log
    finally:
        u.close()


def test_ep_a_sealed_secret_opens_only_with_its_key_and_its_target():
    k, other = secretbox.derive(b"k" * 32, secretbox.CHAP_WIRE), secretbox.derive(b"j" * 32, secretbox.CHAP_WIRE)
    sealed = secretbox.seal(k, "a-chap-secret-1", "iqn.2026-11.org.dvsan:unit-a:vda1")
    assert secretbox.unseal(k, sealed, "iqn.2026-11.org.dvsan:unit-a:vda1") == "a-chap-secret-1"
    from dvsan.errors import InvalidInput
    for key, target, text in ((other, "iqn.2026-11.org.dvsan:unit-a:vda1", sealed),
                              (k, "iqn.2026-11.org.dvsan:unit-a:vda2", sealed),
                              (k, "iqn.2026-11.org.dvsan:unit-a:vda1", sealed[:-4] + "AAAA"),
                              (k, "iqn.2026-11.org.dvsan:unit-a:vda1", "not base64!"),
                              (k, "iqn.2026-11.org.dvsan:unit-a:vda1", "")):
        with pytest.raises(InvalidInput):
            secretbox.unseal(key, text, target)




def test_gp_mutual_chap_when_the_host_asks_sealed_on_the_wire_and_at_rest(station, tmp_path):
    u = UnitHarness(station)
    wire = raw_datagrams(u)
    try:
        u.start()
        online(station, 3)
        tb = host_token(station, tmp_path, "host-b", IQN_B)
        ask = {"host": "host-b", "initiator_iqn": IQN_B, "host_address": "127.0.0.2", "size": "100M"}
        one_way = call(station, "POST", "/api/v1/assignments?wait=60", tb, json=ask).json()
        assert one_way["mutual_user"] == "" and one_way["mutual_secret"] is None
        r = call(station, "POST", "/api/v1/assignments?wait=60", tb, json={**ask, "mutual_chap": True})
        assert r.status_code == 201, r.text
        a = r.json()
        m_user, m_secret = a["mutual_user"], a["mutual_secret"]
        assert m_user.startswith("dvsan-t-") and len(m_secret) >= 12
        assert m_secret != a["chap_secret"] and m_user != a["chap_user"]
        held = u.lio.exports[a["target_iqn"]]
        assert (held.mutual_user, held.mutual_secret) == (m_user, m_secret)
        assert (held.chap_user, held.chap_secret) == (a["chap_user"], a["chap_secret"])
        assert m_secret not in repr(held)
        assert not any(m_secret.encode() in d for d in wire)
        db = (station.data_dir / "station.db").read_bytes() + b"".join(
            p.read_bytes() for p in station.data_dir.glob("station.db-*"))
        assert m_secret.encode() not in db
        viewer = user_token(station, "vera", "viewer")
        seen = call(station, "GET", f"/api/v1/assignments/{a['id']}", viewer).json()
        assert seen["mutual_user"] == m_user and seen["mutual_secret"] is None
        for bad in ({"mutual_chap": "yes please"}, {"mutual_chap": None}):
            assert call(station, "POST", "/api/v1/assignments?wait=60", tb, json={**ask, **bad}).status_code == 422
        station.stop()
        assert m_secret not in station.log.read_text()
    finally:
        u.close()
