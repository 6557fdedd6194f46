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


def _start_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    """unit_agent.cli.main up to opening LIO (a fake that records and fails: no configfs here)."""
    import secrets
    import signal

    import unit_agent.lio
    from unit_agent.cli import main

    opened: list[str] = []

    def fake_lio(*args: object, **kw: object) -> None:
        opened.append("lio")
        raise AdapterError("no configfs in this test")

    monkeypatch.setattr(unit_agent.lio, "Lio", fake_lio)
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    monkeypatch.setenv("DVSAN_UNIT_CLUSTER_KEY", secrets.token_hex(32))
    rc = main(["--name", "unit-a", "--station", "127.0.0.1:9", "--portal-address", "127.0.0.1",
               "--station-trust", "first-contact", "--state-dir", str(tmp_path / "state"),
               "--no-link-watch"])
    return rc, opened


def test_gp_the_agent_moves_the_autosave_aside_before_it_opens_lio(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    etc = tmp_path / "etc" / "target"
    etc.mkdir(parents=True)
    (etc / "saveconfig.json").write_text('{"targets": [{"wwn": "stale"}]}')
    monkeypatch.setenv("DVSAN_UNIT_SYSFS_ROOT", str(tmp_path))
    rc, opened = _start_agent(tmp_path, monkeypatch)
    assert (rc, opened) == (2, ["lio"])                   # got as far as LIO, with the file gone
    assert not (etc / "saveconfig.json").exists()
    assert [p.read_text() for p in (etc / "disabled-by-dvsan").iterdir()] == ['{"targets": [{"wwn": "stale"}]}']
    assert "no configfs in this test" in capsys.readouterr().err


def test_ep_the_agent_does_not_start_beside_an_autosave_it_cannot_move(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    etc = tmp_path / "etc" / "target"
    etc.mkdir(parents=True)
    (etc / "saveconfig.json").write_text("{}")
    (etc / "disabled-by-dvsan").write_text("a file where the directory should be")
    monkeypatch.setenv("DVSAN_UNIT_SYSFS_ROOT", str(tmp_path))
    rc, opened = _start_agent(tmp_path, monkeypatch)
    assert (rc, opened) == (2, [])                        # LIO never opened
    err = capsys.readouterr().err
    assert "cannot move the LIO auto-save file aside" in err and "mask rtslib-fb-targetctl.service" in err
    assert (etc / "saveconfig.json").exists()
