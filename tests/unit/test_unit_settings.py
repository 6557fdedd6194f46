"""unit_agent.settings: SNMP trap security and engine ID, the station pin's place and mode, key rotation.

The cluster key side of these settings is in test_settings_keys.py; the key sources in order and a
rotation end to end are in test_identity.py. These tests pin what the mutation run found unchecked
(docs/testing.md): the complete SNMPv3 user, the engine ID's RFC 3411 bounds, where the station's
key is pinned and how private its directory is, and the words of the refusals.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from dvsan.errors import InvalidInput
from dvsan.identity import Signer, encode_public, fingerprint, generate, save_public_key
from dvsan.traps import UsmUser
from unit_agent.settings import UnitSettings


def settings(tmp_path: Path | None = None, **kw: Any) -> UnitSettings:
    if tmp_path is not None:
        kw.setdefault("state_dir", tmp_path / "state")
    return UnitSettings(name="unit-a", **kw)


# --- SNMP notifications ---------------------------------------------------------------------------

def test_gp_a_complete_v3_user_signs_the_traps_and_no_community_is_set():
    sec = settings(trap_v3_user="dvsan", trap_v3_auth_key="authkey123",
                   trap_v3_priv_key="privkey456").trap_security()
    assert sec.user == UsmUser("dvsan", "authkey123", "privkey456")
    assert sec.community is None


PARTIAL_V3 = [
    {"trap_v3_user": "dvsan"},
    {"trap_v3_auth_key": "authkey123"},
    {"trap_v3_priv_key": "privkey456"},
    {"trap_v3_user": "dvsan", "trap_v3_auth_key": "authkey123"},
    {"trap_v3_user": "dvsan", "trap_v3_priv_key": "privkey456"},
    {"trap_v3_auth_key": "authkey123", "trap_v3_priv_key": "privkey456"},
]


@pytest.mark.parametrize("given", PARTIAL_V3, ids=["+".join(sorted(g)) for g in PARTIAL_V3])
def test_ep_any_part_of_a_v3_user_without_the_rest_is_refused(given):
    with pytest.raises(InvalidInput, match="^an SNMPv3 trap user needs --trap-v3-user, "
                       "--trap-v3-auth-key-file and --trap-v3-priv-key-file$"):
        settings(trap_community="public", **given).trap_security()


@pytest.mark.parametrize(("engine", "raw"), [
    ("0x" + "01" * 5, bytes([1] * 5)),          # the shortest RFC 3411 allows
    ("AB" * 32, bytes([0xAB] * 32)),            # the longest, upper-case hex, no prefix
    ("0X8000000001020304", bytes.fromhex("8000000001020304")),
])
def test_gp_engine_ids_of_5_to_32_octets_are_taken(engine, raw):
    assert settings(snmp_engine_id=engine).engine_id() == raw


@pytest.mark.parametrize(("engine", "message"), [
    ("01" * 4, r"^an SNMP engine ID is 5-32 octets \(RFC 3411\)$"),
    ("01" * 33, r"^an SNMP engine ID is 5-32 octets \(RFC 3411\)$"),
    ("0x80zz000001", r"^SNMP engine ID '0x80zz000001' is not hexadecimal$"),
])
def test_ep_engine_ids_outside_5_to_32_octets_or_not_hex_are_refused(engine, message):
    with pytest.raises(InvalidInput, match=message):
        settings(snmp_engine_id=engine).engine_id()


# --- the station's key: where it is pinned ----------------------------------------------------------

def test_gp_first_contact_makes_a_private_state_dir_and_pins_to_station_pub(tmp_path):
    state_dir = tmp_path / "var" / "lib" / "dvsan-unit"          # none of it exists yet
    old = os.umask(0o022)
    try:
        pin = settings(state_dir=state_dir, station_trust="first-contact").load_station_pin()
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(state_dir).st_mode) == 0o700
    assert pin.first_contact and pin.key is None
    station_key = generate()
    pin.save(station_key.public_key())
    assert (state_dir / "station.pub").read_text().strip() == encode_public(station_key)


def test_gp_a_key_already_in_station_pub_is_the_pin(tmp_path):
    station_key = generate()
    (tmp_path / "state").mkdir()
    save_public_key(tmp_path / "state" / "station.pub", station_key)
    pin = settings(tmp_path).load_station_pin()                   # trust "pinned": no fallback
    assert encode_public(pin.key) == encode_public(station_key) and not pin.first_contact


def test_ep_no_station_key_says_every_way_to_give_one(tmp_path):
    with pytest.raises(InvalidInput) as ei:
        settings(tmp_path).load_station_pin()
    assert str(ei.value) == (
        "no station key: give --station-key-file (the station writes it as "
        "DATA_DIR/station_identity.pub) or --station-key, or allow pinning the first "
        "station that answers with --station-trust first-contact")


# --- the unit's own key ------------------------------------------------------------------------------

def test_ep_a_second_rotation_says_how_to_finish_the_first(tmp_path):
    st = settings(tmp_path)
    st.load_signer()
    st.rotate_key()
    prev = tmp_path / "state" / "unit.key.prev"
    with pytest.raises(InvalidInput) as ei:
        st.rotate_key()
    assert str(ei.value) == (f"a key rotation is already under way ({prev} exists): start the "
                             "agent so the station takes the new key")


def test_gp_rotation_confirmed_after_the_old_key_was_removed_by_hand(tmp_path):
    st = settings(tmp_path)
    st.load_signer()
    old_fp, new_fp = st.rotate_key()
    signer = st.load_signer()
    assert fingerprint(signer.previous) == old_fp
    (tmp_path / "state" / "unit.key.prev").unlink()     # an operator tidied up first
    signer.confirmed()                                  # the station took the new key: no error
    assert signer.previous is None and fingerprint(st.load_signer().key) == new_fp


def test_gp_identity_key_file_given_is_where_the_key_is_made(tmp_path):
    path = tmp_path / "keys" / "my-unit.key"
    path.parent.mkdir()
    signer = settings(tmp_path, identity_key_file=path).load_signer()
    assert path.exists() and not (tmp_path / "state" / "unit.key").exists()
    assert isinstance(signer, Signer) and signer.name == "unit-a"



def test_gp_wipes_may_be_told_to_write_zeros_instead_of_the_disks_write_zeroes(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from unit_agent.settings import UnitSettings

    assert UnitSettings().wipe_zeroout is True
    assert UnitSettings(wipe_zeroout=False).wipe_zeroout is False
    monkeypatch.setenv("DVSAN_UNIT_WIPE_ZEROOUT", "false")
    assert UnitSettings().wipe_zeroout is False
    monkeypatch.setenv("DVSAN_UNIT_WIPE_ZEROOUT", "maybe")
    with pytest.raises(ValidationError):
        UnitSettings()
