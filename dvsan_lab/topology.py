"""The lab's shape as plain data: guests, addresses, disks, and the dvsan-specific device names."""

from dataclasses import dataclass

MiB = 1024 * 1024
GiB = 1024 * MiB


@dataclass(frozen=True)
class DiskSpec:
    """A raw sparse disk image, GPT-partitioned on the machine before the guest boots."""

    size: int
    partitions: tuple[int, ...]  # sizes in bytes, in order; () leaves the disk blank (no label)

    def sfdisk_script(self) -> str:
        """The sfdisk input that lays out the partitions (sfdisk aligns them to 1 MiB)."""
        lines = ["label: gpt"]
        lines += [f"size={p // MiB}MiB" for p in self.partitions]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class GuestSpec:
    """One guest: its name (also its hostname), last address octet, memory and optional disk."""

    name: str
    octet: int
    memory: str = "1G"
    disk: DiskSpec | None = None
    # more disks after `disk` (vdb, vdc...), each with its own stable serial (<vm name>-<letter>)
    extra_disks: tuple[DiskSpec, ...] = ()
    # booted only when asked (`Lab.boot`), into the running lab: the disaster-recovery guests, so
    # the quick flows pay nothing for them
    on_demand: bool = False


@dataclass(frozen=True)
class Topology:
    """Everything `up` creates; the names are dvsan-specific so `down` can never hit someone else's."""

    guests: tuple[GuestSpec, ...]
    subnet: str = "10.213.77"  # a /24, given as its first three octets
    prefixlen: int = 24
    host_octet: int = 254
    netns: str = "dvsanlab"
    veth: str = "dvsanlab0"  # machine side, carries host_ip
    veth_peer: str = "dvsanlab0p"  # inside the netns, enslaved to the bridge
    bridge: str = "dvsanbr0"
    tap_prefix: str = "dvsantap"
    exec_port: int = 7000
    iqn_prefix: str = "iqn.2026-11.org.dvsan.lab"
    vm_prefix: str = "dvsanlab-"  # qemu -name; also how our processes are recognised

    @property
    def host_ip(self) -> str:
        return f"{self.subnet}.{self.host_octet}"

    def ip(self, guest: GuestSpec) -> str:
        return f"{self.subnet}.{guest.octet}"

    def tap(self, index: int) -> str:
        return f"{self.tap_prefix}{index}"

    def mac(self, guest: GuestSpec) -> str:
        return f"52:54:00:77:00:{guest.octet:02x}"

    def vm_name(self, guest: GuestSpec) -> str:
        return f"{self.vm_prefix}{guest.name}"

    def initiator_name(self, guest: GuestSpec) -> str:
        return f"{self.iqn_prefix}:{guest.name}"

    def hosts_file(self) -> str:
        """/etc/hosts lines so guests can use names (the machine side is `station`)."""
        lines = [f"{self.host_ip} station"]
        lines += [f"{self.ip(g)} {g.name}" for g in self.guests]
        return "\n".join(lines) + "\n"


UNIT_DISK = DiskSpec(size=4 * GiB, partitions=(512 * MiB, 1280 * MiB, 2 * GiB))
# the failure lab's units: smaller, so that resyncs and wipes under emulation stay short
DR_DISK = DiskSpec(size=2 * GiB, partitions=(256 * MiB, 512 * MiB, 1 * GiB))
# unit-a's second disk (vdb): blank, for partitioning from the console (tests/lab/test_partition_lab.py)
BLANK_DISK = DiskSpec(size=2 * GiB, partitions=())

DEFAULT_TOPOLOGY = Topology(
    guests=(
        GuestSpec("unit-a", 11, disk=UNIT_DISK, extra_disks=(BLANK_DISK,)),
        GuestSpec("host-b", 12),
        GuestSpec("host-c", 13),
        # the failure lab (tests/lab/test_disaster_recovery.py): a second unit for mirrors, a spare
        # unit, a spare host; booted into the running lab once, by the tests that need them
        GuestSpec("unit-d", 14, disk=DR_DISK, on_demand=True),
        GuestSpec("unit-spare", 15, disk=DR_DISK, on_demand=True),
        GuestSpec("host-spare", 16, on_demand=True),
    )
)

QUICK_GUESTS = tuple(g.name for g in DEFAULT_TOPOLOGY.guests if not g.on_demand)
