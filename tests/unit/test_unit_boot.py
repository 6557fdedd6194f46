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


def test_gp_shipped_lvm_and_mdadm_settings_keep_the_os_off_data_partitions() -> None:
    lvm = (DEPLOY / "lvm-dvsan.conf").read_text()
    active = "\n".join(ln for ln in lvm.splitlines() if not ln.strip().startswith("#"))
    for key in ("global_filter", "auto_activation_volume_list", "event_activation = 0"):
        assert key in active, key
    assert '"r|.*|"' in active                          # reject all but what is accepted
    assert active.count("{") == active.count("}") == 3
    md = [ln.strip() for ln in (DEPLOY / "mdadm-dvsan.conf").read_text().splitlines()
          if ln.strip() and not ln.startswith("#")]
    assert md == ["AUTO -all"]


def test_gp_shipped_service_never_runs_beside_a_lio_restore() -> None:
    import configparser
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.read_string((DEPLOY / "dvsan-unit-agent.service").read_text())
    assert set(cp["Unit"]["Conflicts"].split()) == {"rtslib-fb-targetctl.service", "target.service"}
    assert "dvsan-unit-agent" in cp["Service"]["ExecStart"]
    assert "systemctl mask" in (DEPLOY / "mask-lio-restore.sh").read_text()
