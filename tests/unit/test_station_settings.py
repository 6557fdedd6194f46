"""station.settings: SNMPv3 users and when traps are taken, the database URL, where the cluster key
and the station's identity are kept.

The cluster key rule and key files are in test_settings_keys.py; these tests pin what the mutation
run found unchecked (docs/testing.md).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from dvsan.errors import InvalidInput
from dvsan.identity import encode_public, generate, load_public_key, save_public_key
from dvsan.traps import UsmUser
from station.settings import StationSettings

V3 = {"trap_v3_user": "dvsan", "trap_v3_auth_key": "authkey123", "trap_v3_priv_key": "privkey456"}


def station(tmp_path: Path | None = None, **kw: Any) -> StationSettings:
    if tmp_path is not None:
        kw.setdefault("data_dir", tmp_path / "data")
    return StationSettings(**kw)


# --- SNMP notifications -----------------------------------------------------------------------------

def test_gp_snmp_users_are_the_listed_ones_then_the_single_one_with_their_keys():
    s = station(trap_v3_users=[{"name": "a", "auth_key": "authkey-a1", "priv_key": "privkey-a1"}], **V3)
    assert s.snmp_users() == [UsmUser("a", "authkey-a1", "privkey-a1"),
                              UsmUser("dvsan", "authkey123", "privkey456")]
    assert station().snmp_users() == []


PARTIAL_V3 = [{k: V3[k]} for k in V3] + [{k: V3[k] for k in V3 if k != left} for left in V3]


@pytest.mark.parametrize("given", PARTIAL_V3, ids=["+".join(sorted(g)) for g in PARTIAL_V3])
def test_ep_any_part_of_the_single_v3_user_without_the_rest_is_refused(given):
    with pytest.raises(InvalidInput, match="^an SNMPv3 trap user needs a name, an authentication "
                                           "key and a privacy key$"):
        station(**given).snmp_users()


@pytest.mark.parametrize(("entry", "message"), [
    ({"auth_key": "authkey123", "priv_key": "privkey456"}, "an SNMPv3 user name is 1-32 printable"),
    ({"name": "a", "priv_key": "privkey456"}, "authentication key of user 'a' is shorter than 8"),
    ({"name": "a", "auth_key": "authkey123"}, "privacy key of user 'a' is shorter than 8"),
])
def test_ep_a_listed_v3_user_missing_a_field_is_refused(entry, message):
    with pytest.raises(InvalidInput, match=message):
        station(trap_v3_users=[entry]).snmp_users()


@pytest.mark.parametrize(("kw", "enabled"), [
    ({}, False),                                                       # nobody may send
    ({"trap_communities": ["public"]}, True),
    ({"trap_v3_users": [{"name": "a", "auth_key": "authkey123", "priv_key": "privkey456"}]}, True),
    ({"trap_v3_user": "dvsan"}, True),
    ({"trap_port": 0, "trap_communities": ["public"]}, False),          # no port
    ({"trap_port": 1, "trap_communities": ["public"]}, True),
    ({"trap_port": 0, **V3}, False),
])
def test_gp_snmp_is_on_with_a_port_and_someone_allowed_to_send(kw, enabled):
    assert station(**kw).snmp_enabled is enabled


# --- the database -------------------------------------------------------------------------------------

def test_gp_the_database_is_sqlite_in_the_data_dir_unless_a_url_is_given(tmp_path):
    assert station(tmp_path).db_url == f"sqlite:///{tmp_path}/data/station.db"
    url = "postgresql+psycopg://dvsan@db.example.org/dvsan"
    assert station(tmp_path, database_url=url).db_url == url


# --- the cluster key: made in the data dir -----------------------------------------------------------

def test_gp_the_cluster_key_is_made_in_a_data_dir_that_does_not_exist_yet(tmp_path):
    data_dir = tmp_path / "var" / "lib" / "dvsan"
    key = station(data_dir=data_dir).load_cluster_key()
    assert (data_dir / "cluster.key").read_text() == key.decode() + "\n"
    assert stat.S_IMODE(os.stat(data_dir / "cluster.key").st_mode) == 0o600


def test_gp_the_cluster_key_is_made_in_a_data_dir_that_exists_without_one(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "station.db").write_text("")       # a data dir in use, no key yet
    key = station(tmp_path).load_cluster_key()
    assert len(key) == 64 and (tmp_path / "data" / "cluster.key").exists()


def test_gp_development_pads_a_15_byte_key_and_takes_16_bytes_as_given(tmp_path):
    dev = "development"
    assert station(tmp_path, environment=dev, cluster_key=SecretStr("k" * 15)).load_cluster_key() \
        == b"k" * 15 + b"\0"
    assert station(tmp_path, environment=dev, cluster_key=SecretStr("k" * 16)).load_cluster_key() \
        == b"k" * 16


# --- the station's identity ------------------------------------------------------------------------------

def test_gp_identity_made_at_first_start_with_its_public_key_beside_it(tmp_path):
    (tmp_path / "data").mkdir()
    key = station(tmp_path).load_identity()
    assert (tmp_path / "data" / "station_identity.key").exists()
    pub = tmp_path / "data" / "station_identity.pub"
    assert encode_public(load_public_key(pub)) == encode_public(key)
    assert encode_public(station(tmp_path).load_identity()) == encode_public(key)   # kept


def test_gp_a_stale_public_key_file_is_rewritten_from_the_private_key(tmp_path):
    (tmp_path / "data").mkdir()
    key = station(tmp_path).load_identity()
    pub = tmp_path / "data" / "station_identity.pub"
    save_public_key(pub, generate())                       # left from an older key
    assert encode_public(station(tmp_path).load_identity()) == encode_public(key)
    assert pub.read_text().strip() == encode_public(key)


def test_gp_a_public_key_file_that_matches_is_left_alone(tmp_path):
    (tmp_path / "data").mkdir()
    station(tmp_path).load_identity()
    pub = tmp_path / "data" / "station_identity.pub"
    inode = os.stat(pub).st_ino
    station(tmp_path).load_identity()
    assert os.stat(pub).st_ino == inode                    # not replaced


def test_gp_identity_key_file_given_is_used_with_its_pub_beside_it(tmp_path):
    path = tmp_path / "keys" / "st.key"
    path.parent.mkdir()
    key = station(tmp_path, identity_key_file=path).load_identity()
    assert path.exists() and not (tmp_path / "data" / "station_identity.key").exists()
    assert (tmp_path / "keys" / "st.pub").read_text().strip() == encode_public(key)


# --- the key that seals secrets in the database (DATA_DIR/secrets.key) ----------------------------------

def test_gp_the_secrets_key_is_made_once_0600_in_a_data_dir_that_does_not_exist_yet(tmp_path):
    data_dir = tmp_path / "var" / "lib" / "dvsan"
    key = station(data_dir=data_dir).load_secrets_key()
    path = data_dir / "secrets.key"
    assert len(key) == 32 and path.read_text() == key.hex() + "\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert station(data_dir=data_dir).load_secrets_key() == key            # kept, not made again
    (tmp_path / "other").mkdir()                                            # a data dir without one
    assert len(station(data_dir=tmp_path / "other").load_secrets_key()) == 32


def test_gp_a_secrets_key_file_is_read_as_64_hex_digits(tmp_path):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "secrets.key"
    path.write_text("  " + "0f" * 32 + "\n")
    path.chmod(0o600)
    assert station(tmp_path).load_secrets_key() == b"\x0f" * 32


@pytest.mark.parametrize("text", ["zz" * 32, "0f" * 31, "0f" * 33, ""])
def test_ep_a_secrets_key_file_not_of_64_hex_digits_is_refused(tmp_path, text):
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "secrets.key"
    path.write_text(text + "\n")
    path.chmod(0o600)
    with pytest.raises(InvalidInput) as ei:
        station(tmp_path).load_secrets_key()
    assert str(ei.value) == f"{path} must hold 64 hexadecimal digits"


def test_ep_a_secrets_key_file_others_may_read_is_refused(tmp_path):
    station(tmp_path).load_secrets_key()
    (tmp_path / "data" / "secrets.key").chmod(0o644)
    with pytest.raises(InvalidInput, match="accessible by group or others"):
        station(tmp_path).load_secrets_key()
