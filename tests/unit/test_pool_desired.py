"""station.services.pool.desired_state with CHAP on a real migrated SQLite database: every export
carries its one-way CHAP (and mutual CHAP when asked), opened with the station's vault; none goes
out without it; a withheld export does not stop the ones after it (mutation survivors of
docs/testing.md, 2026-12-07)."""

import os

import pytest

from dvsan.model import mutual_aad
from station.services import assignments, pool
from station.services.chap import ChapVault
from tests.unit.test_pool_guard import MiB, db, parts, start

__all__ = ["db"]       # the fixture, imported


def grant(db, host: str, vault: ChapVault | None, mutual: bool = False) -> int:
    return assignments.allocate(db, host, f"iqn.2026-11.org.dvsan.lab:{host}", "127.0.0.2", 10 * MiB,
                                vault=vault, mutual=mutual)


def test_gp_exports_carry_their_chap_and_mutual_chap_opened(db):
    vault = ChapVault.of(os.urandom(32), os.urandom(32))
    start(db, "unit-a", parts("unit-a", 64, 64, 64))
    plain, one_way, both = grant(db, "host-1", None), grant(db, "host-2", vault), grant(db, "host-3", vault, True)
    with db.session() as s:
        rows = {a: assignments.get(s, a) for a in (plain, one_way, both)}
        st = pool.desired_state(s, "unit-a", vault.reveal)
    got = {e.target_iqn: (e.chap_user, e.chap_secret, e.mutual_user, e.mutual_secret) for e in st.exports}
    r = rows[plain]
    assert got.pop(r.target_iqn) == ("", "", "", "")
    r = rows[one_way]
    secret = vault.reveal(r.target_iqn, r.chap_secret_sealed)
    assert r.chap_user and len(secret) >= 12
    assert got.pop(r.target_iqn) == (r.chap_user, secret, "", "")
    r = rows[both]
    mutual = vault.reveal(mutual_aad(r.target_iqn), r.mutual_secret_sealed)
    assert r.mutual_user and len(mutual) >= 12 and mutual != vault.reveal(r.target_iqn, r.chap_secret_sealed)
    assert got.pop(r.target_iqn) == (r.chap_user, vault.reveal(r.target_iqn, r.chap_secret_sealed),
                                     r.mutual_user, mutual)
    assert got == {}


def test_ep_an_export_with_chap_never_goes_out_without_its_secret(db):
    vault = ChapVault.of(os.urandom(32), os.urandom(32))
    start(db, "unit-a", parts("unit-a", 64, 64))
    grant(db, "host-1", None)
    aid = grant(db, "host-2", vault, True)
    with db.session() as s, pytest.raises(ValueError) as e:
        pool.desired_state(s, "unit-a")
    assert str(e.value) == f"assignment {aid} has CHAP and nothing to open its secret with"


def test_gp_a_withheld_export_does_not_stop_the_ones_after_it(db):
    start(db, "unit-a", parts("unit-a", 64, 64, 64))
    ids = [grant(db, f"host-{i}", None) for i in range(3)]
    with db.session() as s:
        rows = [assignments.get(s, a) for a in ids]
        first = rows[0].volume.device
        targets = [r.target_iqn for r in rows]
        pool.record_storage_info(s, "unit-a", [p for p in parts("unit-a", 64, 64, 64) if p.device != first])
    with db.session() as s:
        st = pool.desired_state(s, "unit-a")
    assert [e.target_iqn for e in st.exports] == targets[1:]
    assert st.withheld == {ids[0]: "volume is missing: no longer reported by its unit"}
    assert st.drop == []
