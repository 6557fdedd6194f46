"""host_agent.mdadm: parsers of `mdadm --examine --export` and of the sysfs md view (good and bad
input), and the command lines the adapter runs (through a recording runner: no md driver here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from host_agent.mdadm import (
    Mdadm,
    MdadmError,
    MdadmParseError,
    Member,
    OtherSignature,
    Superblock,
    md_path,
    parse_examine_export,
    parse_member_state,
    parse_sync_completed,
    read_array,
)

EXAMINE = """MD_LEVEL=raid1
MD_DEVICES=2
MD_NAME=any:dvsan-5
MD_ARRAY_SIZE=1071.64MB
MD_UUID=3d0b6b0c:1f8e2a7b:9c4d5e6f:01234567
MD_UPDATE_TIME=1765130000
MD_DEV_UUID=aa0b6b0c:1f8e2a7b:9c4d5e6f:01234567
MD_EVENTS=18
"""
UUID = "3d0b6b0c:1f8e2a7b:9c4d5e6f:01234567"


def test_gp_examine_export_is_parsed() -> None:
    sb = parse_examine_export(EXAMINE)
    assert sb == Superblock(UUID, "any:dvsan-5", "raid1", 2, 18)
    assert isinstance(sb, Superblock) and sb.short_name == "dvsan-5"


@pytest.mark.parametrize("name", ["any:dvsan-5", "host-b:dvsan-5", "dvsan-5"])
def test_gp_the_home_host_mdadm_prefixes_does_not_hide_the_mirror(name: str) -> None:
    sb = Superblock(UUID, name, "raid1", 2)
    assert sb.is_mirror(5) and not sb.is_mirror(6) and not sb.is_mirror(55)


def test_gp_a_recorded_uuid_decides_over_the_name() -> None:
    sb = Superblock(UUID, "any:dvsan-5", "raid1", 2)
    assert sb.is_mirror(5, UUID)
    assert not sb.is_mirror(5, "00000000:00000000:00000000:00000000")   # same name, another array


def test_gp_a_090_superblock_has_no_name() -> None:
    sb = parse_examine_export("MD_LEVEL=raid1\nMD_DEVICES=2\nMD_UUID=" + UUID + "\nMD_UPDATE_TIME=1\nMD_EVENTS=3\n")
    assert isinstance(sb, Superblock) and sb.name is None and not sb.is_mirror(5)


@pytest.mark.parametrize("text,what", [("/dev/sdb:\n   MBR Magic : aa55\nPartition[0] :  2048 sectors", "MBR"),
                                       ("/dev/sdb:\n          Magic : GPT\n", "GPT")])
def test_gp_a_partition_table_is_another_signature(text: str, what: str) -> None:
    sig = parse_examine_export(text)
    assert isinstance(sig, OtherSignature) and what in sig.what


@pytest.mark.parametrize("text,match", [
    ("", "no MD_UUID"),
    ("MD_LEVEL=raid1\nMD_DEVICES=2\n", "no MD_UUID"),
    ("MD_LEVEL=raid1\nMD_DEVICES=two\nMD_UUID=" + UUID, "not a number"),
    ("MD_LEVEL=raid1\nMD_DEVICES=2\nMD_UUID=not-a-uuid", "bad MD_UUID"),
    ("MD_LEVEL=raid1\ngarbage line\n", "expected KEY=VALUE"),
    ("mdadm: something new\n", "printed no MD_ keys"),
])
def test_ep_surprising_examine_output_is_a_clear_error(text: str, match: str) -> None:
    with pytest.raises(MdadmParseError, match=match):
        parse_examine_export(text)


@pytest.mark.parametrize("text,pct", [("none", None), ("1048576 / 2097152", 50.0), ("delayed", 0.0),
                                      ("2097152 / 2097152", 100.0)])
def test_gp_sync_completed(text: str, pct: float | None) -> None:
    assert parse_sync_completed(text) == pct


@pytest.mark.parametrize("text", ["12 of 24", "5 / 0", "-1 / 4", "50%"])
def test_ep_bad_sync_completed(text: str) -> None:
    with pytest.raises(MdadmParseError, match="sync_completed"):
        parse_sync_completed(text)


def test_gp_member_state_flags() -> None:
    assert parse_member_state("in_sync,write_mostly\n") == {"in_sync", "write_mostly"}


@pytest.mark.parametrize("text", ["", "In Sync", "in_sync;faulty"])
def test_ep_bad_member_state(text: str) -> None:
    with pytest.raises(MdadmParseError, match="member state"):
        parse_member_state(text)


@pytest.mark.parametrize("flags,slot,action,state", [
    ({"in_sync"}, 0, "idle", "active"), ({"faulty"}, 1, "idle", "faulty"),
    ({"in_sync", "faulty"}, 1, "idle", "faulty"), ({"spare"}, 1, "recover", "resyncing"),
    ({"spare"}, None, "idle", "spare"), ({"spare"}, 1, "idle", "spare")])
def test_gp_member_health(flags: set[str], slot: int | None, action: str, state: str) -> None:
    assert Member("sdb", frozenset(flags), slot).state(action) == state


def md_tree(root: Path, array_state: str = "clean", degraded: str = "0", action: str = "idle",
            completed: str = "none", members: dict[str, tuple[str, str]] | None = None) -> Path:
    md = root / "block" / "md127" / "md"
    md.mkdir(parents=True)
    for k, v in {"array_state": array_state, "degraded": degraded, "sync_action": action,
                 "sync_completed": completed, "raid_disks": "2"}.items():
        (md / k).write_text(v + "\n")
    for dev, (state, slot) in (members or {"sdb": ("in_sync", "0"), "sdc": ("in_sync", "1")}).items():
        (md / f"dev-{dev}").mkdir()
        (md / f"dev-{dev}" / "state").write_text(state + "\n")
        (md / f"dev-{dev}" / "slot").write_text(slot + "\n")
    return md


def test_gp_a_clean_array(tmp_path: Path) -> None:
    v = read_array(md_tree(tmp_path))
    assert (v.name, v.running, v.health(), v.active(), v.sync_percent) == ("md127", True, "clean", ["sdb", "sdc"], None)


def test_gp_a_resyncing_array_with_a_new_member(tmp_path: Path) -> None:
    v = read_array(md_tree(tmp_path, "active", "1", "recover", "524288 / 2097152",
                           {"sdb": ("in_sync", "0"), "sdd": ("spare", "1")}))
    assert v.health() == "resyncing" and v.sync_percent == 25.0
    assert [m.state(v.sync_action) for m in v.members] == ["active", "resyncing"]


def test_gp_a_degraded_array(tmp_path: Path) -> None:
    v = read_array(md_tree(tmp_path, "clean", "1", members={"sdb": ("in_sync", "0"), "sdc": ("faulty", "1")}))
    assert v.health() == "degraded" and v.active() == ["sdb"]


def test_gp_an_inactive_array_is_failed(tmp_path: Path) -> None:
    md = md_tree(tmp_path, "inactive", members={"sdb": ("spare", "none")})
    (md / "degraded").unlink()
    v = read_array(md)
    assert not v.running and v.health() == "failed"


@pytest.mark.parametrize("change,match", [({"array_state": "exploded"}, "array_state"),
                                          ({"sync_action": "dancing"}, "sync_action"),
                                          ({"degraded": "one"}, "degraded is not a number"),
                                          ({"dev-sdb/slot": "first"}, "bad slot")])
def test_ep_surprising_sysfs_is_a_clear_error(tmp_path: Path, change: dict[str, str], match: str) -> None:
    md = md_tree(tmp_path)
    for k, v in change.items():
        (md / k).write_text(v)
    with pytest.raises(MdadmParseError, match=match):
        read_array(md)


def test_ep_a_missing_sysfs_attribute_is_a_clear_error(tmp_path: Path) -> None:
    md = md_tree(tmp_path)
    (md / "sync_action").unlink()
    with pytest.raises(MdadmError, match="cannot read .*sync_action"):
        read_array(md)


class Runner:
    """Records each argv; answers with the next (rc, stdout, stderr)."""

    def __init__(self, *answers: tuple[int, str, str]) -> None:
        self.answers = list(answers)
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        self.argvs.append(argv)
        rc, out, err = self.answers.pop(0) if self.answers else (0, "", "")
        return subprocess.CompletedProcess(argv, rc, out, err)


def test_gp_command_lines() -> None:
    r = Runner()
    md = Mdadm(runner=r, link_timeout=0)
    md.create(5, ["sdb", "sdc"])
    md.assemble(5, ["sdb"])
    md.add(5, "sdd")
    md.fail_remove(5, "sdc")
    md.stop(5)
    assert r.argvs == [
        ["mdadm", "--create", "/dev/md/dvsan-5", "--run", "--level=1", "--raid-devices=2", "--metadata=1.2",
         "--bitmap=internal", "--name=dvsan-5", "--homehost=any", "/dev/sdb", "/dev/sdc"],
        ["mdadm", "--assemble", "/dev/md/dvsan-5", "--run", "--homehost=any", "/dev/sdb"],
        ["mdadm", "/dev/md/dvsan-5", "--add", "/dev/sdd"],
        ["mdadm", "/dev/md/dvsan-5", "--fail", "/dev/sdc", "--remove", "/dev/sdc"],
        ["mdadm", "--stop", "/dev/md/dvsan-5"]]
    assert md_path(5) == "/dev/md/dvsan-5"
    assert not any("--assume-clean" in a for a in r.argvs[0])


def test_gp_create_returns_once_the_link_is_there(tmp_path: Path) -> None:
    def makes_link(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        (tmp_path / "md").mkdir()
        (tmp_path / "md" / "dvsan-5").symlink_to("../md127")
        (tmp_path / "md127").touch()
        return subprocess.CompletedProcess(argv, 0, "", "")

    Mdadm(runner=makes_link, dev=str(tmp_path)).create(5, ["sdb", "sdc"])


def test_ep_create_says_when_the_link_never_comes(tmp_path: Path) -> None:
    with pytest.raises(MdadmError, match="md/dvsan-5 did not appear"):
        Mdadm(runner=Runner(), dev=str(tmp_path), link_timeout=0.2).assemble(5, ["sdb"])


def test_gp_a_known_kernel_name_is_acted_on_directly() -> None:
    r = Runner()
    md = Mdadm(runner=r)
    md.add(5, "sdd", "md126")
    md.fail_remove(5, "sdc", "md126")
    md.stop(5, "md126")
    assert r.argvs == [["mdadm", "/dev/md126", "--add", "/dev/sdd"],
                       ["mdadm", "/dev/md126", "--fail", "/dev/sdc", "--remove", "/dev/sdc"],
                       ["mdadm", "--stop", "/dev/md126"]]


def test_ep_create_wants_two_members() -> None:
    with pytest.raises(ValueError, match="two members"):
        Mdadm(runner=Runner()).create(5, ["sdb"])


def test_gp_examine() -> None:
    r = Runner((0, EXAMINE, ""), (1, "", "mdadm: No md superblock detected on /dev/sdc.\n"))
    md = Mdadm(runner=r)
    assert isinstance(md.examine("sdb"), Superblock)
    assert md.examine("sdc") is None
    assert r.argvs[0] == ["mdadm", "--examine", "--export", "/dev/sdb"]


def test_ep_examine_of_an_unreadable_device_is_an_error_not_blank() -> None:
    md = Mdadm(runner=Runner((1, "", "mdadm: cannot open /dev/sdx: No such file or directory\n")))
    with pytest.raises(MdadmError, match="cannot open /dev/sdx"):
        md.examine("sdx")


def test_ep_a_failing_mdadm_names_its_command_and_message() -> None:
    msg = ("mdadm: Cannot get exclusive access to /dev/md/dvsan-5:Perhaps a running process, mounted "
           "filesystem or active volume group?\n")
    md = Mdadm(runner=Runner((1, "", msg)))
    with pytest.raises(MdadmError, match=r"mdadm --stop /dev/md/dvsan-5 failed with exit 1: .*exclusive access") as e:
        md.stop(5)
    assert e.value.rc == 1


def test_ep_mdadm_missing_or_hanging() -> None:
    def missing(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        raise FileNotFoundError(argv[0])

    def hangs(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        raise subprocess.TimeoutExpired(argv, timeout)

    with pytest.raises(MdadmError, match="not installed"):
        Mdadm(runner=missing).stop(5)
    with pytest.raises(MdadmError, match="no answer within"):
        Mdadm(runner=hangs).stop(5)


def test_gp_the_array_is_found_by_name_or_by_holder(tmp_path: Path) -> None:
    md_tree(tmp_path / "sys")
    (tmp_path / "dev" / "md").mkdir(parents=True)
    (tmp_path / "dev" / "md127").touch()
    (tmp_path / "dev" / "md" / "dvsan-5").symlink_to("../md127")
    holders = tmp_path / "sys" / "class" / "block" / "sdb" / "holders"
    holders.mkdir(parents=True)
    (holders / "md127").touch()
    md = Mdadm(sysfs=str(tmp_path / "sys"), dev=str(tmp_path / "dev"), runner=Runner())
    assert md.kernel_name(5) == "md127" and md.kernel_name(6) is None
    assert md.array_of("sdb") == "md127" and md.array_of("sdc") is None
    view = md.view("md127")
    assert view is not None and view.health() == "clean"
    assert md.view("md9") is None


def test_gp_real_mdadm_says_no_superblock_on_a_blank_file(tmp_path: Path) -> None:
    """The message the adapter keys on, from the mdadm installed here (no md driver needed)."""
    import shutil

    exe = shutil.which("mdadm") or ("/sbin/mdadm" if Path("/sbin/mdadm").exists() else None)
    if exe is None:
        pytest.skip("mdadm is not installed")
    blank = tmp_path / "blank.img"
    with blank.open("wb") as f:
        f.truncate(8 << 20)
    assert Mdadm(executable=exe).examine(str(blank)) is None


def test_gp_a_member_of_a_dead_unit_that_no_longer_opens_goes_out_as_detached() -> None:
    """Seen in the lab: after the replacement timeout the member's SCSI device is offline, mdadm
    cannot open it by name (ENXIO): md's `detached` takes it out, and only such members."""
    r = Runner()
    r.answers = [(1, "", "mdadm: Cannot open /dev/sdb: No such device or address\n"), (0, "", "")]
    Mdadm(runner=r).fail_remove(5, "sdb", "md127")
    assert r.argvs == [["mdadm", "/dev/md127", "--fail", "/dev/sdb", "--remove", "/dev/sdb"],
                       ["mdadm", "/dev/md127", "--fail", "detached", "--remove", "detached"]]


def test_ep_another_fail_remove_error_is_not_papered_over() -> None:
    r = Runner()
    r.answers = [(1, "", "mdadm: set device faulty failed for /dev/sdb:  Device or resource busy\n")]
    with pytest.raises(MdadmError, match="resource busy"):
        Mdadm(runner=r).fail_remove(5, "sdb", "md127")
    assert len(r.argvs) == 1
