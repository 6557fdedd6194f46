"""The domain model: partitions a unit offers, volumes in the pool, exports a unit must hold."""

import re
from dataclasses import dataclass, field
from typing import Any

from dvsan import secretbox
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
    # The partition's stable identity (GPT/MBR partition entry UUID as blkid reports it), "" if the
    # unit could not read one. A repartitioned or replaced disk gives the same device name a new uid.
    uid: str = ""

    def __post_init__(self) -> None:
        check_device(self.device)
        check_device(self.disk)
        check_uid(self.uid)
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
            "block_size": self.block_size, "size_bytes": self.size_bytes, "uid": self.uid,
        }

    @property
    def extent(self) -> "Extent":
        return Extent(self.start_lba, self.length_blocks, self.block_size, self.uid)

    @classmethod
    def from_wire(cls, d: Any) -> "Partition":
        if not isinstance(d, dict):
            raise InvalidInput(f"a partition must be an object, got {type(d).__name__}")
        try:
            return cls(**{k: d[k] for k in (
                "device", "disk", "number", "start_lba", "length_blocks", "end_lba", "block_size", "size_bytes")},
                uid=d.get("uid", ""))
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


_UID_RE = re.compile(r"^[0-9A-Za-z._:-]{0,64}$")
_WWN_RE = re.compile(r"^[0-9a-f-]{0,36}$")


def check_uid(uid: Any) -> str:
    """A partition identity: up to 64 of [0-9A-Za-z._:-] ("" = unknown)."""
    if not isinstance(uid, str) or not _UID_RE.fullmatch(uid):
        raise InvalidInput(f"invalid partition identity {uid!r}")
    return uid


def _nonneg(name: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise InvalidInput(f"{name} must be a non-negative integer, got {v!r}")
    return v


@dataclass(frozen=True, slots=True)
class Extent:
    """Where on its disk a volume lies, and which partition it is: what an export must match."""

    start_lba: int
    length_blocks: int
    block_size: int
    uid: str = ""

    def __post_init__(self) -> None:
        _nonneg("extent start", self.start_lba)
        _nonneg("extent length", self.length_blocks)
        if self.block_size not in VALID_BLOCK_SIZES:
            raise InvalidInput(f"extent block size {self.block_size!r} is not one of {VALID_BLOCK_SIZES}")
        check_uid(self.uid)

    def mismatch(self, actual: "Extent") -> str | None:
        """Why `actual` (what the kernel shows) is not this extent; None if it is."""
        if (self.start_lba, self.length_blocks, self.block_size) != \
                (actual.start_lba, actual.length_blocks, actual.block_size):
            return (f"extent changed: expected start {self.start_lba} length {self.length_blocks} x "
                    f"{self.block_size} B, the disk now has start {actual.start_lba} length "
                    f"{actual.length_blocks} x {actual.block_size} B")
        if self.uid and actual.uid != self.uid:
            return f"partition identity changed: expected {self.uid}, the disk now has {actual.uid or 'none'}"
        return None

    def to_wire(self) -> dict[str, Any]:
        return {"start_lba": self.start_lba, "length_blocks": self.length_blocks,
                "block_size": self.block_size, "uid": self.uid}

    @classmethod
    def from_wire(cls, d: Any) -> "Extent":
        if not isinstance(d, dict):
            raise InvalidInput("an extent must be an object")
        try:
            return cls(d["start_lba"], d["length_blocks"], d["block_size"], d.get("uid", ""))
        except KeyError as e:
            raise InvalidInput(f"extent is missing field {e.args[0]!r}") from e


_CHAP_USER_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_CHAP_SECRET_RE = re.compile(r"^[!-~]{12,128}$")      # printable ASCII, no space


def mutual_aad(target_iqn: str) -> str:
    """What a sealed mutual CHAP secret is bound to: its target, and that it is the mutual one
    (so that the two sealed secrets of one export cannot be swapped)."""
    return f"{target_iqn}#mutual"


def check_chap(user: str, secret: str) -> None:
    """CHAP credentials LIO and open-iscsi both take: a plain user name, a 12-128 character secret."""
    if not isinstance(user, str) or not _CHAP_USER_RE.fullmatch(user):
        raise InvalidInput("CHAP user must be 1-64 of [A-Za-z0-9._:-]")
    if not isinstance(secret, str) or not _CHAP_SECRET_RE.fullmatch(secret):
        raise InvalidInput("CHAP secret must be 12-128 printable characters without spaces")


@dataclass(frozen=True, slots=True)
class Export:
    """One volume a unit must export: a target with LUN 0 and ACLs for exactly these initiators.

    `wwn` is the LUN's unit serial (SCSI VPD 0x80; LIO derives the NAA WWN from it), derived from
    the volume's identity so that it is the same across re-creations and differs for another
    extent. `extent` is what the device must be before the unit exports it (None when read back
    from LIO, which does not know it).
    """

    device: str
    target_iqn: str
    initiators: tuple[str, ...] = field(default_factory=tuple)
    lun: int = 0
    wwn: str = ""
    extent: Extent | None = None
    # One-way CHAP every initiator of this export must answer (empty: none). On the wire the
    # secret travels sealed (dvsan.secretbox); in memory it is plain, and never in a repr.
    chap_user: str = ""
    chap_secret: str = field(default="", repr=False)
    # Mutual CHAP: the credentials the target answers the initiator with (empty: one-way only).
    mutual_user: str = ""
    mutual_secret: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        check_device(self.device)
        check_iqn(self.target_iqn)
        if self.chap_user or self.chap_secret:
            check_chap(self.chap_user, self.chap_secret)
        if self.mutual_user or self.mutual_secret:
            if not self.chap_user:
                raise InvalidInput(f"export {self.target_iqn}: mutual CHAP needs one-way CHAP as well")
            check_chap(self.mutual_user, self.mutual_secret)
            if self.mutual_secret == self.chap_secret:
                raise InvalidInput(f"export {self.target_iqn}: the mutual CHAP secret must differ from "
                                   "the initiator's")
        for i in self.initiators:
            check_iqn(i)
        if not isinstance(self.lun, int) or isinstance(self.lun, bool) or self.lun < 0:
            raise InvalidInput(f"export {self.target_iqn}: LUN must be a non-negative integer, got {self.lun!r}")
        if not isinstance(self.wwn, str) or not _WWN_RE.fullmatch(self.wwn):
            raise InvalidInput(f"export {self.target_iqn}: invalid unit serial {self.wwn!r}")

    def to_wire(self, chap_key: bytes | None = None) -> dict[str, Any]:
        """The export as a protocol body; a CHAP secret goes sealed with `chap_key`, never plain."""
        out: dict[str, Any] = {"device": self.device, "target_iqn": self.target_iqn,
                               "initiators": list(self.initiators), "lun": self.lun, "wwn": self.wwn}
        if self.extent is not None:
            out["extent"] = self.extent.to_wire()
        if self.chap_user:
            if chap_key is None:
                raise ValueError(f"export {self.target_iqn} has a CHAP secret and no key to seal it with")
            out["chap"] = {"user": self.chap_user,
                           "secret": secretbox.seal(chap_key, self.chap_secret, self.target_iqn)}
            if self.mutual_user:
                out["chap"]["mutual_user"] = self.mutual_user
                out["chap"]["mutual_secret"] = secretbox.seal(chap_key, self.mutual_secret,
                                                              mutual_aad(self.target_iqn))
        return out

    @classmethod
    def from_wire(cls, d: Any, chap_key: bytes | None = None) -> "Export":
        if not isinstance(d, dict):
            raise InvalidInput("an export must be an object")
        try:
            inits = d["initiators"]
            if not isinstance(inits, list) or not all(isinstance(i, str) for i in inits):
                raise InvalidInput("export initiators must be a list of iSCSI names")
            extent = Extent.from_wire(d["extent"]) if d.get("extent") is not None else None
            user = secret = m_user = m_secret = ""
            chap = d.get("chap")
            if chap is not None:
                if not isinstance(chap, dict) or not isinstance(chap.get("user"), str) \
                        or not isinstance(chap.get("secret"), str):
                    raise InvalidInput("export chap must be an object with 'user' and a sealed 'secret'")
                if chap_key is None:
                    raise InvalidInput("export carries CHAP but this side has no key to open it")
                user = chap["user"]
                secret = secretbox.unseal(chap_key, chap["secret"], str(d["target_iqn"]))
                if chap.get("mutual_user") is not None or chap.get("mutual_secret") is not None:
                    if not isinstance(chap.get("mutual_user"), str) or not isinstance(chap.get("mutual_secret"), str):
                        raise InvalidInput("export chap mutual_user and a sealed mutual_secret go together")
                    m_user = chap["mutual_user"]
                    m_secret = secretbox.unseal(chap_key, chap["mutual_secret"], mutual_aad(str(d["target_iqn"])))
            return cls(device=d["device"], target_iqn=d["target_iqn"],
                       initiators=tuple(sorted(inits)), lun=d.get("lun", 0), wwn=d.get("wwn", ""),
                       extent=extent, chap_user=user, chap_secret=secret, mutual_user=m_user,
                       mutual_secret=m_secret)
        except KeyError as e:
            raise InvalidInput(f"export is missing field {e.args[0]!r}") from e
