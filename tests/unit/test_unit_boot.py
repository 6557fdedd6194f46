"""A unit's boot path never restores a saved LIO configuration (issue 15 item 12)."""

from pathlib import Path

import pytest

from dvsan.errors import AdapterError
from unit_agent.bootsafety import disable_autosave


def test_gp_autosave_and_its_backups_are_moved_aside(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "target"
    (etc / "backup").mkdir(parents=True)
    (etc / "saveconfig.json").write_text('{"targets": []}')
    (etc / "backup" / "saveconfig-20261101.json").write_text("{}")
    (etc / "backup" / "notes.txt").write_text("kept")
    moved = disable_autosave(tmp_path)
    assert len(moved) == 2 and all(p.parent == etc / "disabled-by-dvsan" for p in moved)
    assert not (etc / "saveconfig.json").exists()
    assert not (etc / "backup" / "saveconfig-20261101.json").exists()
    assert (etc / "backup" / "notes.txt").exists()
    assert disable_autosave(tmp_path) == []               # nothing left to restore


def test_gp_nothing_to_do_without_etc_target(tmp_path: Path) -> None:
    assert disable_autosave(tmp_path) == []


def test_ep_an_autosave_that_cannot_be_moved_stops_the_agent(tmp_path: Path) -> None:
    etc = tmp_path / "etc" / "target"
    etc.mkdir(parents=True)
    (etc / "saveconfig.json").write_text("{}")
    (etc / "disabled-by-dvsan").write_text("a file where the directory should be")
    with pytest.raises(AdapterError, match="cannot move the LIO auto-save file aside"):
        disable_autosave(tmp_path)
    assert (etc / "saveconfig.json").exists()


DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "unit"


def lvm_sections(text: str) -> dict[str, dict[str, str]]:
    """lvm.conf's `section { key = value }` layout (comments dropped); AssertionError if malformed."""
    out: dict[str, dict[str, str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.endswith("{"):
            assert section is None, f"nested section at {raw!r}"
            section = line[:-1].strip()
            out[section] = {}
        elif line == "}":
            assert section is not None, "unbalanced }"
            section = None
        else:
            key, eq, value = line.partition("=")
            assert eq and section is not None, f"not a key = value in a section: {raw!r}"
            out[section][key.strip()] = value.strip()
    assert section is None, "section not closed"
    return out


def test_gp_shipped_lvm_and_mdadm_settings_keep_the_os_off_data_partitions() -> None:
    conf = lvm_sections((DEPLOY / "lvm-dvsan.conf").read_text())
    assert conf["devices"]["global_filter"].endswith('"r|.*|" ]')   # reject all but what is accepted
    assert conf["activation"]["auto_activation_volume_list"].startswith("[")
    assert conf["global"]["event_activation"] == "0"
    assert "use_devicesfile" not in conf["devices"]      # would strand a root VG not listed in it
    md = [ln.strip() for ln in (DEPLOY / "mdadm-dvsan.conf").read_text().splitlines()
          if ln.strip() and not ln.startswith("#")]
    assert md == ["AUTO -all"]


def test_ep_the_lvm_check_catches_a_broken_snippet() -> None:
    with pytest.raises(AssertionError, match="section not closed"):
        lvm_sections("devices {\n global_filter = [ \"r|.*|\" ]\n")
    with pytest.raises(AssertionError, match="not a key = value"):
        lvm_sections("devices {\n global_filter\n}\n")


def test_gp_shipped_service_never_runs_beside_a_lio_restore() -> None:
    import configparser
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string((DEPLOY / "dvsan-unit-agent.service").read_text())
    assert set(cp["Unit"]["Conflicts"].split()) == {"rtslib-fb-targetctl.service", "target.service"}
    assert "dvsan-unit-agent" in cp["Service"]["ExecStart"]
    assert "systemctl mask" in (DEPLOY / "mask-lio-restore.sh").read_text()
