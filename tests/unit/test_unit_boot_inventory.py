"""A partition the pool exported keeps being offered when it holds the host's filesystem, also
after a reboot emptied LIO; a new partition with a signature is not (issue 15 item 12).

Drives the real path: the fake sysfs tree of test_inventory, a fake `blkid -p`, the unit agent's
`apply_exports`, and unit_agent.cli.OwningLio between the agent and an in-memory LIO.
"""

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dvsan.model import Export, Partition
from dvsan.reconcile import Action, CreateExport
from tests.unit.test_inventory import ENTRY, build
from tests.unit.test_unit_exports import POOL, FakeLio, body, export
from unit_agent.agent import UnitAgent
from unit_agent.cli import OwningLio
from unit_agent.inventory import scan
from unit_agent.poolpin import PoolPin

UNIT = "unit-a"


class Disk:
    """What `blkid -p` finds on the fake tree's vda partitions; a test writes signatures."""

    def __init__(self) -> None:
        self.found = {d: dict(e) for d, e in ENTRY.items()}

    def probe(self, device: str) -> dict[str, str]:
        return dict(self.found.get(device, {}))


def boot(root: Path, disk: Disk, pin_path: Path, lio: FakeLio | None = None) -> tuple[UnitAgent, OwningLio]:
    """The unit agent as unit_agent.cli wires it: the inventory keeps what OwningLio says."""
    pin = PoolPin(pin_path)
    owning = OwningLio(lio or FakeLio(), pin)

    def inventory() -> list[Partition]:
        return scan(str(root), ["vda"], probe=disk.probe, offer="empty", keep=owning.keep()).offered

    agent = UnitAgent(UNIT, b"k" * 32, ("127.0.0.1", 9), "127.0.0.1", 3260, owning, inventory)
    agent.pin = pin
    return agent, owning


def push(agent: UnitAgent, *exports: dict[str, Any], generation: int) -> dict[str, Any]:
    return asyncio.run(agent.apply_exports(body(*exports, generation=generation)))


def offered(agent: UnitAgent) -> dict[str, Partition]:
    return {p.device: p for p in agent.inventory()}


def test_gp_an_exported_partition_stays_offered_with_the_hosts_filesystem_across_a_reboot(
        tmp_path: Path) -> None:
    root, disk, pin_path = build(tmp_path / "root"), Disk(), tmp_path / "state" / "pool.json"
    agent, _ = boot(root, disk, pin_path)
    vda2 = offered(agent)["vda2"]
    assert vda2.uid == ENTRY["vda2"]["PART_ENTRY_UUID"]
    assert push(agent, export(vda2), generation=1)["refused"] == []
    disk.found["vda2"]["TYPE"] = "ext4"                   # the host made its filesystem on it
    assert "vda2" in offered(agent)                       # exported now: kept
    assert PoolPin(pin_path).owned == {vda2.uid}          # remembered by identity, in the pin

    agent, lio = boot(root, disk, pin_path)               # reboot: LIO is empty, nothing restored
    assert lio.actual_exports() == []
    assert "vda2" in offered(agent)
    ack = push(agent, export(vda2), generation=2)
    assert ack["refused"] == [] and ack["changes"] == 1, ack


def test_ep_a_new_partition_with_a_signature_is_not_offered_and_its_export_refused(
        tmp_path: Path) -> None:
    """The same disk state without the pool's record: vda2 is somebody's data, not dvsan's."""
    root, disk, pin_path = build(tmp_path / "root"), Disk(), tmp_path / "state" / "pool.json"
    disk.found["vda2"]["TYPE"] = "ext4"
    agent, lio = boot(root, disk, pin_path)
    assert "vda2" not in offered(agent)
    vda2 = Partition("vda2", "vda", 2, 1050624, 2621440, 1050624 + 2621440 - 1, 512, 2621440 * 512,
                     ENTRY["vda2"]["PART_ENTRY_UUID"])
    ack = push(agent, export(vda2), generation=1)
    assert [r["reason"] for r in ack["refused"]] == [
        "device vda2 is not offered by this unit (in use, mounted or gone)"]
    assert lio.actual_exports() == [] and PoolPin(pin_path).owned == set()


def test_ep_a_replaced_partition_under_the_same_name_loses_the_pools_record(tmp_path: Path) -> None:
    """The record is by partition uid: another partition named vda2 holding ext4 is not kept."""
    root, disk, pin_path = build(tmp_path / "root"), Disk(), tmp_path / "state" / "pool.json"
    agent, _ = boot(root, disk, pin_path)
    push(agent, export(offered(agent)["vda2"]), generation=1)
    disk.found["vda2"].update(TYPE="ext4", PART_ENTRY_UUID="9d9d9d9d-0000-4000-8000-000000000002")
    agent, _ = boot(root, disk, pin_path)                 # reboot onto the other disk
    assert "vda2" not in offered(agent)


class HungLio(FakeLio):
    """Like unit_agent.lio.Lio: one lock around every read and write of configfs."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.entered = threading.Event()

    def actual_exports(self) -> list[Export]:
        with self.lock:
            return super().actual_exports()

    def apply(self, actions: Sequence[Action]) -> None:
        with self.lock:
            self.entered.set()
            super().apply(actions)


def test_gp_the_inventory_answers_while_a_change_hangs_on_a_dead_disk(tmp_path: Path) -> None:
    root, disk, pin_path = build(tmp_path / "root"), Disk(), tmp_path / "state" / "pool.json"
    hung = HungLio()
    agent, owning = boot(root, disk, pin_path, hung)
    vda1 = offered(agent)["vda1"]
    agent.pin.admit(POOL, 1)
    hung.gate = threading.Event()
    e = Export.from_wire(export(vda1))
    worker = threading.Thread(target=owning.apply, args=([CreateExport(e)],))
    worker.start()
    assert hung.entered.wait(10)
    try:
        assert owning.keep() == frozenset()               # answered without LIO's lock
        assert "vda1" in offered(agent)
    finally:
        hung.gate.set()
        worker.join(10)
    assert owning.keep() == {"vda1", vda1.uid}          # held now, and remembered by uid


def _inventory_cmd(tmp_path: Path, monkeypatch: Any, disk: Disk, *argv: str) -> int:
    import unit_agent.inventory
    from unit_agent.cli import main

    monkeypatch.setattr(unit_agent.inventory, "blkid_probe", disk.probe)
    monkeypatch.setenv("DVSAN_UNIT_SYSFS_ROOT", str(tmp_path / "root"))
    monkeypatch.setenv("DVSAN_UNIT_STATE_DIR", str(tmp_path / "state"))
    return main(["--name", UNIT, "--disk", "vda", "--inventory", *argv])


def test_gp_inventory_command_names_what_it_offers_and_why_not_the_rest(
        tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    build(tmp_path / "root")
    disk = Disk()
    disk.found["vda1"].update(TYPE="ext4", USAGE="filesystem")
    assert _inventory_cmd(tmp_path, monkeypatch, disk) == 0
    out = capsys.readouterr().out
    assert f"uid {ENTRY['vda2']['PART_ENTRY_UUID']}" in out and "offer vda3" in out
    assert "skip  vda1       holds an ext4 filesystem" in out
    assert _inventory_cmd(tmp_path, monkeypatch, disk, "--offer", "marked") == 0
    assert [ln.split()[1] for ln in capsys.readouterr().out.splitlines() if ln.startswith("offer")] == ["vda3"]


def test_ep_inventory_command_fails_closed_without_the_swap_table(
        tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    (build(tmp_path / "root") / "proc" / "swaps").unlink()
    assert _inventory_cmd(tmp_path, monkeypatch, Disk()) == 2
    captured = capsys.readouterr()
    assert "cannot read" in captured.err and "not offering anything" in captured.err
    assert "offer " not in captured.out
