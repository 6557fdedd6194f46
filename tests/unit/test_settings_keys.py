"""Cluster keys: weak keys refused, key files made 0600 and refused when others may read them.

Both sides (station/settings.py, unit_agent/settings.py) apply the one rule of dvsan/keyfiles.py.
"""

import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from dvsan import keyfiles
from dvsan.errors import InvalidInput
from station.settings import StationSettings, write_secret_file
from unit_agent.settings import UnitSettings

GOOD = "3f9c2a7d1e8b4c6f0a5d9e2b7c1f4a8d"        # 32 hex digits, 16 distinct


def mode(p: Path) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def station(tmp_path: Path, **kw: object) -> StationSettings:
    return StationSettings(data_dir=tmp_path / "data", **kw)  # type: ignore[arg-type]


def unit(**kw: object) -> UnitSettings:
    return UnitSettings(name="unit-a", **kw)  # type: ignore[arg-type]


def key_file(tmp_path: Path, text: str, file_mode: int = 0o600) -> Path:
    p = tmp_path / "cluster.key"
    p.write_text(text + "\n")
    p.chmod(file_mode)
    return p


WEAK = [
    ("short", "a1b2c3d4e5f6", "12 bytes, fewer than 16"),
    ("one byte repeated", "k" * 64, "only 1 distinct characters, fewer than 8"),
    ("two bytes alternating", "ab" * 20, "only 2 distinct characters"),
    ("seven distinct", "abcdefg" * 4, "only 7 distinct characters, fewer than 8"),
    ("a word", "changeme", "8 bytes"),
]


# --- the rule itself ------------------------------------------------------------------------------

@pytest.mark.parametrize(("why", "key", "message"), WEAK, ids=[w[0] for w in WEAK])
def test_ep_weak_keys_are_refused_saying_why(why, key, message):
    with pytest.raises(InvalidInput, match="the cluster key is too weak") as ei:
        keyfiles.check_cluster_key(key.encode())
    assert message in str(ei.value) and "openssl rand -hex 32" in str(ei.value)
    assert key not in str(ei.value) or len(key) < 2      # the key itself is never echoed


def test_ep_every_well_known_word_is_refused():
    for word in sorted(keyfiles.WEAK_WORDS):
        with pytest.raises(InvalidInput, match="too weak"):
            keyfiles.check_cluster_key(word.encode())


def test_ep_a_long_word_from_the_list_is_refused_as_a_word(monkeypatch):
    monkeypatch.setattr(keyfiles, "WEAK_WORDS", frozenset({"correcthorsebatterystaple"}))
    with pytest.raises(InvalidInput, match="well-known word"):
        keyfiles.check_cluster_key(b"CorrectHorseBatteryStaple")


@pytest.mark.parametrize("key", [GOOD, "abcdefgh" * 2, os.urandom(32).hex()])
def test_gp_keys_meeting_the_rule_are_taken_unchanged(key):
    assert keyfiles.check_cluster_key(key.encode()) == key.encode()


def test_gp_the_boundaries_of_the_rule():
    assert keyfiles.check_cluster_key(b"abcdefgh" + b"a" * 8)          # 16 bytes, 8 distinct
    with pytest.raises(InvalidInput, match="15 bytes"):
        keyfiles.check_cluster_key(b"abcdefgh" + b"a" * 7)
    with pytest.raises(InvalidInput, match="only 7 distinct"):
        keyfiles.check_cluster_key(b"abcdefg" + b"a" * 9)


# --- key files ------------------------------------------------------------------------------------

def test_gp_write_secret_file_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        p = tmp_path / "k"
        write_secret_file(p, "one\n")
        assert mode(p) == 0o600 and p.read_text() == "one\n"
        write_secret_file(p, "two\n")                 # replaced, still 0600
        assert mode(p) == 0o600 and p.read_text() == "two\n"
        assert [x.name for x in tmp_path.iterdir()] == ["k"]     # no temp file left
    finally:
        os.umask(old)


def test_gp_a_stale_world_readable_temp_file_does_not_make_the_key_readable(tmp_path):
    p = tmp_path / "cluster.key"
    stale = tmp_path / ".cluster.key.tmp"
    stale.write_text("left by a crash")
    stale.chmod(0o644)
    write_secret_file(p, GOOD)
    assert mode(p) == 0o600 and p.read_text() == GOOD and not stale.exists()


@pytest.mark.parametrize("file_mode", [0o640, 0o604, 0o644, 0o660, 0o606, 0o610])
def test_ep_key_file_others_may_read_is_refused(tmp_path, file_mode):
    read = keyfiles.read_secret_file
    p = key_file(tmp_path, GOOD, file_mode)
    with pytest.raises(InvalidInput, match=rf"accessible by group or others \(mode 0{file_mode:o}\): chmod 600"):
        read(p)
    p.chmod(0o600)
    assert read(p).strip() == GOOD


def test_ep_missing_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(InvalidInput, match="cannot read key file .*nope"):
        keyfiles.read_secret_file(tmp_path / "nope")


# --- the station ------------------------------------------------------------------------------------

def test_gp_station_makes_a_strong_0600_key_once(tmp_path):
    s = station(tmp_path)
    key = s.load_cluster_key()
    path = tmp_path / "data" / "cluster.key"
    assert mode(path) == 0o600
    assert keyfiles.check_cluster_key(key) == key and len(key) == 64
    assert station(tmp_path).load_cluster_key() == key          # kept, not made again


@pytest.mark.parametrize(("why", "key", "message"), WEAK, ids=[w[0] for w in WEAK])
def test_ep_station_refuses_a_weak_key_given_or_in_a_file(tmp_path, why, key, message):
    with pytest.raises(InvalidInput, match="too weak"):
        station(tmp_path, cluster_key=SecretStr(key)).load_cluster_key()
    p = key_file(tmp_path, key)
    with pytest.raises(InvalidInput, match="too weak"):
        station(tmp_path, cluster_key_file=p).load_cluster_key()


def test_ep_station_refuses_its_own_key_file_once_others_may_read_it(tmp_path):
    station(tmp_path).load_cluster_key()
    path = tmp_path / "data" / "cluster.key"
    path.chmod(0o644)
    with pytest.raises(InvalidInput, match="accessible by group or others"):
        station(tmp_path).load_cluster_key()
    assert path.exists()                                         # refused, never replaced


def test_ep_station_refuses_a_readable_configured_key_file(tmp_path):
    p = key_file(tmp_path, GOOD, 0o640)
    with pytest.raises(InvalidInput, match="accessible by group or others"):
        station(tmp_path, cluster_key_file=p).load_cluster_key()


def test_gp_station_takes_a_good_key_given_or_in_a_file(tmp_path):
    assert station(tmp_path, cluster_key=SecretStr(GOOD)).load_cluster_key() == GOOD.encode()
    p = key_file(tmp_path, GOOD)
    assert station(tmp_path, cluster_key_file=p).load_cluster_key() == GOOD.encode()


def test_ep_station_missing_configured_key_file(tmp_path):
    with pytest.raises(InvalidInput, match="does not exist"):
        station(tmp_path, cluster_key_file=tmp_path / "nope").load_cluster_key()
    assert not (tmp_path / "nope").exists()


def test_gp_development_takes_a_weak_key_padded_to_the_protocol_minimum(tmp_path):
    s = station(tmp_path, environment="development", cluster_key=SecretStr("dev"))
    assert s.load_cluster_key() == b"dev" + b"\0" * 13
    s = station(tmp_path, environment="development", cluster_key=SecretStr("k" * 20))
    assert s.load_cluster_key() == b"k" * 20


# --- the unit agent ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("why", "key", "message"), WEAK, ids=[w[0] for w in WEAK])
def test_ep_unit_refuses_a_weak_key_given_or_in_a_file(tmp_path, why, key, message):
    with pytest.raises(InvalidInput, match=message):
        unit(cluster_key=SecretStr(key)).load_cluster_key()
    with pytest.raises(InvalidInput, match=message):
        unit(cluster_key_file=key_file(tmp_path, key)).load_cluster_key()


@pytest.mark.parametrize("file_mode", [0o644, 0o640, 0o604])
def test_ep_unit_refuses_a_key_file_others_may_read(tmp_path, file_mode):
    with pytest.raises(InvalidInput, match="accessible by group or others"):
        unit(cluster_key_file=key_file(tmp_path, GOOD, file_mode)).load_cluster_key()


def test_gp_unit_takes_a_good_key_given_or_in_a_file(tmp_path):
    assert unit(cluster_key=SecretStr(GOOD)).load_cluster_key() == GOOD.encode()
    assert unit(cluster_key_file=key_file(tmp_path, GOOD)).load_cluster_key() == GOOD.encode()


def test_ep_unit_without_a_key_or_with_a_missing_file(tmp_path):
    with pytest.raises(InvalidInput, match="no cluster key"):
        unit().load_cluster_key()
    with pytest.raises(InvalidInput, match="cannot read key file"):
        unit(cluster_key_file=tmp_path / "nope").load_cluster_key()


def test_ep_unit_without_a_key_says_where_the_station_keeps_it():
    with pytest.raises(InvalidInput) as ei:
        unit().load_cluster_key()
    assert str(ei.value) == ("no cluster key: give --cluster-key-file (the station keeps it in its "
                             "data directory as cluster.key) or DVSAN_UNIT_CLUSTER_KEY")


def test_gp_a_binary_key_that_is_not_utf8_is_judged_like_any_other():
    key = bytes(range(0x80, 0xA0))            # 32 distinct bytes, invalid UTF-8
    assert keyfiles.check_cluster_key(key) == key
    with pytest.raises(InvalidInput, match="only 1 distinct"):
        keyfiles.check_cluster_key(b"\xff" * 20)


def test_ep_readable_key_file_error_says_the_key_is_exposed(tmp_path):
    with pytest.raises(InvalidInput, match="chmod 600 it, and consider the key exposed"):
        keyfiles.read_secret_file(key_file(tmp_path, GOOD, 0o644))


def test_ep_a_failed_write_leaves_no_temp_file_and_the_old_key(tmp_path):
    target = tmp_path / "cluster.key"
    target.mkdir()                             # os.replace over a directory fails
    (target / "x").write_text("")
    with pytest.raises(OSError):
        write_secret_file(target, GOOD)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.key"]


# --- secrets given in files, one a line (station and unit command lines) ------------------------------

def test_gp_secret_lines_skip_blanks_and_comments_and_are_stripped(tmp_path):
    p = key_file(tmp_path, "# SNMP communities\n\n  public-one  \n#old-one\npublic-two\t")
    assert keyfiles.read_secret_lines(p) == ["public-one", "public-two"]


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_ep_a_secret_file_with_no_secret_is_refused_naming_it(tmp_path, text):
    p = key_file(tmp_path, text)
    with pytest.raises(InvalidInput) as ei:
        keyfiles.read_secret_lines(p)
    assert str(ei.value) == f"secret file {p} holds no secret"


def test_ep_a_secret_lines_file_others_may_read_is_refused(tmp_path):
    with pytest.raises(InvalidInput, match="accessible by group or others"):
        keyfiles.read_secret_lines(key_file(tmp_path, "public-one", 0o644))


def test_ep_a_secret_on_the_command_line_is_refused_saying_where_to_put_it():
    assert keyfiles.cli_secret_refused("--cluster-key", "--cluster-key-file", "DVSAN_CLUSTER_KEY") == (
        "--cluster-key takes no secret on the command line, where every local user can read it "
        "(/proc/PID/cmdline, ps): put it in a file of mode 0600 and give --cluster-key-file FILE, "
        "or set DVSAN_CLUSTER_KEY")
