"""The domain model: partitions a unit offers, volumes in the pool, exports a unit must hold."""

from dataclasses import dataclass, field
from typing import Any

from dvsan.errors import InvalidInput
from dvsan.naming import check_device, check_iqn

VALID_BLOCK_SIZES = (512, 1024, 2048, 4096)


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition a unit offers, in logical blocks of the disk (as sfdisk reports them)."""

    device: str          # kernel name, e.g. "vda2"
    disk: str            # parent disk, e.g. "vda"
    number: int          # partition number on the disk
    start_lba: int
    length_blocks: int
    end_lba: int         # inclusive: start_lba + length_blocks - 1
    block_size: int      # logical block size in bytes
    size_bytes: int

    def __post_init__(self) -> None:
        check_device(self.device)
        check_device(self.disk)
        for name in ("number", "start_lba", "length_blocks", "end_lba", "block_size", "size_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise InvalidInput(f"partition {self.device}: {name} must be a non-negative integer, got {v!r}")
        if self.block_size not in VALID_BLOCK_SIZES:
            raise InvalidInput(f"partition {self.device}: block size {self.block_size} is not one of {VALID_BLOCK_SIZES}")
        if self.length_blocks == 0:
            raise InvalidInput(f"partition {self.device}: length is zero")
        if self.end_lba != self.start_lba + self.length_blocks - 1:
            raise InvalidInput(
                f"partition {self.device}: end LBA {self.end_lba} != start {self.start_lba} + length {self.length_blocks} - 1"
            )
        if self.size_bytes != self.length_blocks * self.block_size:
            raise InvalidInput(
                f"partition {self.device}: size {self.size_bytes} != {self.length_blocks} blocks x {self.block_size}"
            )

    def to_wire(self) -> dict[str, Any]:
        return {
            "device": self.device, "disk": self.disk, "number": self.number,
            "start_lba": self.start_lba, "length_blocks": self.length_blocks, "end_lba": self.end_lba,
            "block_size": self.block_size, "size_bytes": self.size_bytes,
        }

    @classmethod
    def from_wire(cls, d: Any) -> "Partition":
        if not isinstance(d, dict):
            raise InvalidInput(f"a partition must be an object, got {type(d).__name__}")
        try:
            return cls(**{k: d[k] for k in (
                "device", "disk", "number", "start_lba", "length_blocks", "end_lba", "block_size", "size_bytes")})
        except KeyError as e:
            raise InvalidInput(f"partition is missing field {e.args[0]!r}") from e
        except TypeError as e:
            raise InvalidInput(f"bad partition: {e}") from e


@dataclass(frozen=True, slots=True)
class Candidate:
    """A free, online volume as allocation sees it."""

    volume_id: int
    unit: str
    device: str
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Export:
    """One volume a unit must export: a target with LUN 0 and ACLs for exactly these initiators."""

    device: str
    target_iqn: str
    initiators: tuple[str, ...] = field(default_factory=tuple)
    lun: int = 0

    def __post_init__(self) -> None:
        check_device(self.device)
        check_iqn(self.target_iqn)
        for i in self.initiators:
            check_iqn(i)
        if not isinstance(self.lun, int) or isinstance(self.lun, bool) or self.lun < 0:
            raise InvalidInput(f"export {self.target_iqn}: LUN must be a non-negative integer, got {self.lun!r}")

    def to_wire(self) -> dict[str, Any]:
        return {"device": self.device, "target_iqn": self.target_iqn,
                "initiators": list(self.initiators), "lun": self.lun}

    @classmethod
    def from_wire(cls, d: Any) -> "Export":
        if not isinstance(d, dict):
            raise InvalidInput("an export must be an object")
        try:
            inits = d["initiators"]
            if not isinstance(inits, list) or not all(isinstance(i, str) for i in inits):
                raise InvalidInput("export initiators must be a list of iSCSI names")
            return cls(device=d["device"], target_iqn=d["target_iqn"],
                       initiators=tuple(sorted(inits)), lun=d.get("lun", 0))
        except KeyError as e:
            raise InvalidInput(f"export is missing field {e.args[0]!r}") from e
