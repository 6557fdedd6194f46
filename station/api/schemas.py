"""REST schemas of the station (pydantic): what clients send and what they get back.

What the station checks is in the schema too (names, IQNs, addresses, sizes, ids that fit SQLite's
64-bit integers), so a request the schema allows is not refused for a reason it does not state.
"""

from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Annotated, Any, Literal

from fastapi import Path
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema

from dvsan.errors import InvalidInput
from dvsan.naming import IQN_RE, NAME_RE, check_iqn, check_unit_name
from dvsan.sizes import parse_size

MAX_ID = 2**63 - 1                      # SQLite's INTEGER: larger ids cannot exist


def _utc(t: datetime) -> datetime:
    # NOTE: SQLite hands back naive datetimes for timezone-aware columns; they were written in UTC.
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


# A point in time as RFC 3339 with its offset (the OpenAPI `date-time` format needs one).
UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
# A unit, host or user name, as dvsan/naming.py checks it.
Name = Annotated[str, Field(pattern=NAME_RE.pattern, min_length=1, max_length=63,
                            description="1-63 lower-case letters, digits, '-' or '.', starting with a letter or digit")]
# An iSCSI name (iqn. or eui.), as dvsan/naming.py checks it.
Iqn = Annotated[str, Field(pattern=IQN_RE.pattern, max_length=223,
                           description="an iSCSI name: iqn.YYYY-MM.reversed.domain[:id] or eui.<16 hex>")]
# Path parameters: an object's id, a name.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="the object's id (a 64-bit integer)")]
NamePath = Annotated[str, Path(pattern=NAME_RE.pattern, min_length=1, max_length=63,
                               description="1-63 lower-case letters, digits, '-' or '.'")]
# Sizes: whole bytes, or a number (at least 1) with a unit. A number of bytes is at most 2**53
# (8 PiB): an integer every JSON client holds exactly, and one the OpenAPI document states exactly
# (it writes bounds as floats). Larger sizes, as strings, are taken and refused as no volume fits (409).
MAX_SIZE = 2**53
SIZE_PATTERN = r"^ *0*[1-9][0-9]*(\.[0-9]+)? *([kKmMgGtT]([iI]?[bB])?|[bB])? *$"
Size = (Annotated[int, Field(ge=1, le=MAX_SIZE)]
        | Annotated[str, Field(pattern=SIZE_PATTERN, max_length=64)])


class ErrorPublic(BaseModel):
    """Every error the station answers but a refused request body or parameter: what went wrong,
    and the kind of error."""

    detail: str
    error: str


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrorPublic(BaseModel):
    """A request the schema refuses (FastAPI's validation error): each issue and where it is."""

    detail: list[ValidationIssue]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorPublic, "description": "no credentials, or a token the station does not take",
          "headers": {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}}},
    403: {"model": ErrorPublic, "description": "the caller lacks the permission the message names"},
    404: {"model": ErrorPublic, "description": "no such object (or not one the caller may see)"},
    409: {"model": ErrorPublic, "description": "not possible in the current state (the message says why)"},
    422: {"model": ValidationErrorPublic | ErrorPublic,
          "description": "a body or parameter the schema refuses (each issue), or a value the station "
                         "refuses for a reason the message names"},
    503: {"model": ErrorPublic, "description": "a unit did not answer or is busy; nothing was kept half-done"},
}


class UnitPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    name: str
    state: str
    portal_address: str
    portal_port: int
    dns_name: str | None
    control_host: str
    control_port: int
    agent_version: str
    last_seen: UtcDatetime
    health: str = "ok"
    health_detail: str | None = None
    generation: int = 0


class VolumePublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    unit_name: str
    device: str
    disk: str
    number: int
    start_lba: int
    length_blocks: int
    end_lba: int
    block_size: int
    size_bytes: int
    uid: str = ""
    state: str
    detail: str | None = None
    assigned_to: str | None = None
    wipe_state: str = Field("clean", description="clean (may be handed out), needed, running or "
                            "failed: a released volume is zeroed on its unit before it is free")
    wipe_done_bytes: int = 0
    wipe_total_bytes: int = 0
    wipe_method: str | None = None
    wipe_detail: str | None = None


class AssignmentCreate(BaseModel):
    """A host asks for storage: who it is, where it is, and how much it needs (or which volume)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": ["size"]}, {"required": ["volume_id"]}]})
    host: Name = Field(description="the host's name (lower-case letters, digits, '-', '.')")
    initiator_iqn: Iqn = Field(description="the host's iSCSI initiator name")
    host_address: str = Field(description="the host's IP address on the storage network (IPv4 or IPv6)",
                              max_length=45, json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
    size: Size | SkipJsonSchema[None] = Field(default=None, description=(
        "bytes, or e.g. '1GiB', '80 GB', '512M' (K, M, G, T binary; KB.. decimal); a number of bytes "
        "is 1..2**53 (8 PiB); required unless volume_id names the volume"))
    mutual_chap: bool = Field(default=False, description=(
        "mutual CHAP: the unit proves itself to the host too (its own user and secret, answered "
        "with the assignment)"))
    volume_id: Annotated[int, Field(ge=1, le=MAX_SIZE)] | SkipJsonSchema[None] = Field(default=None, description=(
        "an operator's assignment of this very volume (the semi-automatic path); the host agent "
        "picks it up with `dvsan-host-agent sync`"))

    @model_validator(mode="after")
    def _size_or_volume(self) -> "AssignmentCreate":
        if self.size is None and self.volume_id is None:
            raise ValueError("give the size the host needs, or the volume_id to assign")
        return self

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            return check_unit_name(v)
        except InvalidInput as e:
            raise ValueError(str(e)) from e

    @field_validator("initiator_iqn")
    @classmethod
    def _iqn(cls, v: str) -> str:
        try:
            return check_iqn(v)
        except InvalidInput as e:
            raise ValueError(str(e)) from e

    @field_validator("host_address")
    @classmethod
    def _addr(cls, v: str) -> str:
        try:
            return str(ip_address(v))
        except ValueError as e:
            raise ValueError(f"not an IP address: {v!r}") from e

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | int | None) -> str | int | None:
        try:
            if v is not None:
                parse_size(v)
        except InvalidInput as e:
            raise ValueError(str(e)) from e
        return v

    @property
    def size_bytes(self) -> int:
        """The size asked for (0: whatever the named volume holds)."""
        return parse_size(self.size) if self.size is not None else 0


class AssignmentPublic(BaseModel):
    """Everything a host needs to reach its volume directly, without the station."""

    id: int
    host: str
    initiator_iqn: str
    host_address: str
    requested_bytes: int
    volume_id: int
    unit: str
    unit_address: str
    unit_dns_name: str | None
    portal_port: int
    target_iqn: str
    lun: int
    device: str
    size_bytes: int
    start_lba: int
    end_lba: int
    block_size: int
    volume_state: str
    created_at: UtcDatetime
    wwn: str = ""                      # the LUN's unit serial: the host checks it before use
    export_state: str = "pending"      # pending | exported | refused | withheld
    sessions: int | None = Field(default=None, description=(
        "initiators logged in to its target, as its unit reported in the last minute (its "
        "monitoring samples); null when the unit did not say"))
    export_detail: str | None = None   # why refused or withheld
    volume_detail: str | None = None
    # one-way CHAP the host logs in with; the secret only to the host itself and to operators
    chap_user: str = ""
    chap_secret: str | None = None
    mutual_user: str = ""
    mutual_secret: str | None = None
    mirror_id: int | None = Field(default=None, description="the mirror it is a member of, if any")
    member_state: str = Field(default="unknown", description=(
        "as its host last reported it: active, resyncing, faulty, missing, spare or unknown"))
    fenced: bool = Field(default=False, description=(
        "a host takeover fenced it: its export is withheld and its target dropped at its unit"))


class MirrorCreate(BaseModel):
    """A host asks for a mirrored volume: two volumes on two different units, one RAID1 on the host."""

    model_config = ConfigDict(extra="forbid")
    host: Name = Field(description="the host's name (lower-case letters, digits, '-', '.')")
    initiator_iqn: Iqn = Field(description="the host's iSCSI initiator name")
    host_address: str = Field(description="the host's IP address on the storage network (IPv4 or IPv6)",
                              max_length=45, json_schema_extra={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]})
    size_bytes: Size = Field(description=(
        "of each member: bytes (1..2**53), or a size with a unit as for assignments ('1GiB')"))
    mutual_chap: bool = Field(default=False, description="mutual CHAP on both members")

    _host = field_validator("host")(AssignmentCreate._host.__func__)  # type: ignore[attr-defined]
    _iqn = field_validator("initiator_iqn")(AssignmentCreate._iqn.__func__)  # type: ignore[attr-defined]
    _addr = field_validator("host_address")(AssignmentCreate._addr.__func__)  # type: ignore[attr-defined]
    _size = field_validator("size_bytes")(AssignmentCreate._size.__func__)  # type: ignore[attr-defined]

    @property
    def size(self) -> int:
        """The size of each member, in bytes."""
        return parse_size(self.size_bytes)


class MirrorPublic(BaseModel):
    """A mirrored assignment: its state as its host reports it, and its members (in id order)."""

    id: int
    host: str
    requested_bytes: int
    size_bytes: int = Field(description="the smallest member's size (what the array can hold)")
    state: str = Field(description="unknown (no report yet), clean, degraded, resyncing or failed")
    sync_percent: float | None
    detail: str | None
    reported_at: UtcDatetime | None
    created_at: UtcDatetime
    members: list[AssignmentPublic]


MirrorStateName = Literal["unknown", "clean", "degraded", "resyncing", "failed"]
MemberStateName = Literal["active", "resyncing", "faulty", "missing", "spare", "unknown"]


class MirrorHealth(BaseModel):
    """A host's report of its array: the mirror's state and each member's, by assignment id."""

    model_config = ConfigDict(extra="forbid")
    state: MirrorStateName
    sync_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    detail: Annotated[str, Field(max_length=255)] | None = None
    members: dict[Annotated[str, Field(pattern=r"^[1-9][0-9]{0,17}$")], MemberStateName] = Field(
        default_factory=dict, max_length=16, description='{"<assignment id>": member state}',
        json_schema_extra={"additionalProperties": False, "propertyNames": {"pattern": r"^[1-9][0-9]{0,17}$"}})


class MirrorReplace(BaseModel):
    """Which member to replace (default: the one whose unit is down, else one reported faulty or missing)."""

    model_config = ConfigDict(extra="forbid")
    member: Annotated[int, Field(ge=1, le=MAX_SIZE)] | None = None


class Takeover(BaseModel):
    """The spare host that takes over a failed host's storage."""

    model_config = ConfigDict(extra="forbid")
    to: Name = Field(description="an enrolled host with an initiator name, not the failed one")


class MirrorReleasePublic(BaseModel):
    id: int
    members: list["ReleasePublic"]


class ReleasePublic(BaseModel):
    id: int
    unit: str
    unit_confirmed: bool
    detail: str
    volume_id: int
    wipe_state: str
    wipe_task: int | None = Field(default=None, description="the task following the volume's wipe")


class TaskPublic(BaseModel):
    """A change asked of the station, from queued to its end (`GET /api/v1/tasks/{id}`)."""

    id: int
    kind: str = Field(description="assign, release, wipe, replace, takeover, ...")
    object: str = Field(description="what it changes: /hosts/NAME, /assignments/ID, /volumes/ID, /mirrors/ID")
    requested_by: str = Field(description="user:NAME, host:NAME, or station (the station's own)")
    host: str | None = Field(description="the host whose storage it concerns, if any")
    state: str = Field(description="queued, running, succeeded, failed, cancelled or interrupted")
    step: int = Field(ge=0)
    total_steps: int = Field(ge=1)
    message: str
    result: dict[str, Any] | None
    error: str | None
    error_kind: str | None = Field(description="Conflict, Unavailable, NotFound... (as the HTTP errors)")
    created_at: str
    started_at: str | None
    finished_at: str | None


class UnitSamplePublic(BaseModel):
    """One of a unit's monitoring samples (`GET /api/v1/units/{name}/stats`); rates are per second
    since the sample before it (null for the first one kept)."""

    t: int = Field(description="when the unit took it, milliseconds since the epoch")
    cpu_seconds: float = Field(description="busy CPU seconds, all CPUs (station-kept sum)")
    cpu_percent: float | None = Field(description="busy share of all CPUs since the sample before")
    net_rx_bytes: int
    net_tx_bytes: int
    net_rx_bytes_per_s: float | None
    net_tx_bytes_per_s: float | None
    mem_total: int = Field(description="the unit's memory, bytes")
    mem_available: int = Field(description="memory available to programs, bytes")


class VolumeSamplePublic(BaseModel):
    """One of an exported volume's I/O samples: station-kept sums (bytes in LIO's 1 MiB grain)."""

    t: int
    read_bytes: int
    write_bytes: int
    commands: int
    read_bytes_per_s: float | None
    write_bytes_per_s: float | None
    commands_per_s: float | None


class VolumeStatsPublic(BaseModel):
    device: str
    volume_id: int | None
    samples: list[VolumeSamplePublic]


class UnitLatestPublic(BaseModel):
    """A unit's newest figures."""

    t: float
    cpu_seconds: float
    cpu_percent: float | None
    net_rx_bytes: float
    net_tx_bytes: float
    cpus: int
    mem_total: int
    mem_available: int
    nic: str = Field(description="the storage interface counted, or * for all but loopback")


class UnitStatsPublic(BaseModel):
    """A unit's recent monitoring samples, oldest first, and its exported volumes' I/O."""

    unit: str
    minutes: int
    resolution_s: float = Field(description="at most one sample kept per this many seconds")
    samples: list[UnitSamplePublic]
    latest: UnitLatestPublic | None
    volumes: list[VolumeStatsPublic]
MiB = 1 << 20
PARTITION_NAME = r"^[0-9A-Za-z._-]{0,36}$"


def _json_integer(v: Any) -> Any:
    """A JSON integer (41 or 41.0, as JSON Schema's `integer`), never true/false or "41"."""
    if isinstance(v, (bool, str)):
        raise ValueError("must be an integer")   # noqa: TRY004 - pydantic wants ValueError
    return v


class PartitionCreate(BaseModel):
    """A partition to create: its size (rounded up to whole MiB) and an optional GPT name."""

    model_config = ConfigDict(extra="forbid")
    size_bytes: Annotated[int, BeforeValidator(_json_integer)] = Field(ge=MiB, le=MAX_SIZE,
                                                                     description="at least 1 MiB")
    name: str = Field(default="", pattern=PARTITION_NAME,
                      description="the GPT partition name (e.g. dvsan-1 for offer policy 'marked')")


class DiskLayout(BaseModel):
    """A change to a disk's partition table: a new empty label first, then deletions, then creations."""

    # NOTE: the schema says what the validator checks (something to change, no number twice),
    # so a body the schema allows is never refused for a reason it does not state.
    # Each branch repeats its field's whole schema: generators (schemathesis) take a branch alone.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": [
        {"required": ["label"], "properties": {"label": {"type": "string", "const": "gpt"}}},
        {"required": ["create"], "properties": {"create": {
            "type": "array", "minItems": 1, "maxItems": 128, "items": {
                "type": "object", "additionalProperties": False, "required": ["size_bytes"], "properties": {
                    "size_bytes": {"type": "integer", "minimum": MiB, "maximum": MAX_SIZE},
                    "name": {"type": "string", "pattern": PARTITION_NAME}}}}}},
        {"required": ["delete"], "properties": {"delete": {
            "type": "array", "minItems": 1, "maxItems": 128, "uniqueItems": True,
            "items": {"type": "integer", "minimum": 1, "maximum": 128}}}}]})
    label: Literal["gpt"] | None = Field(default=None, description="write a new, empty GPT label first "
                                         "(every existing partition must be listed in `delete`)")
    create: list[PartitionCreate] = Field(default_factory=list, max_length=128)
    delete: list[Annotated[int, Field(ge=1, le=128), BeforeValidator(_json_integer)]] = Field(
        default_factory=list, max_length=128, description="partition numbers to delete",
        json_schema_extra={"uniqueItems": True})

    @model_validator(mode="after")
    def _changes_something(self) -> "DiskLayout":
        if self.label is None and not self.create and not self.delete:
            raise ValueError("the layout changes nothing: give label, create or delete")
        if len(set(self.delete)) != len(self.delete):
            raise ValueError("delete names a partition twice")
        return self

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"create": [c.model_dump(exclude_defaults=True) for c in self.create],
                               "delete": list(self.delete)}
        if self.label:
            out["label"] = self.label
        return out


class DiskPartitionPublic(BaseModel):
    number: int
    device: str
    start_lba: int
    end_lba: int
    size_bytes: int
    type: str
    uuid: str
    name: str
    in_use: list[str] = Field(description="what is in the way of deleting it (empty: nothing)")
    volume_id: int | None = Field(description="its volume in the pool, if offered")
    assigned_to: str | None


class FreeRegionPublic(BaseModel):
    start_lba: int
    end_lba: int
    size_bytes: int


class DiskPublic(BaseModel):
    """A unit's disk as it last reported it (`GET /api/v1/units/{name}/disks`)."""

    name: str
    id: str = Field(description="a stable identity (WWID or serial), '' if the disk has none")
    size_bytes: int
    sector_size: int
    label: str | None = Field(description="gpt, dos, or null for a disk without a partition table")
    label_id: str | None
    system: bool = Field(description="the unit's system disk: never changed")
    system_detail: str | None
    in_use: list[str]
    partitions: list[DiskPartitionPublic]
    free: list[FreeRegionPublic]
