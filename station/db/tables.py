"""The station's database tables (SQLAlchemy 2 ORM): the single source of truth of the pool."""

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


# States, in one place. Stored as their string values; a StrEnum compares equal to its value.
class UnitState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"            # said goodbye (SHUTDOWN)
    LINK_DOWN = "link-down"        # an SNMP linkDown
    UNREACHABLE = "unreachable"    # silent past the liveness timeout
    # removed by an operator: hidden, its volumes forgotten; the row stays for its generation (the
    # unit refuses EXPORTS older than the last it applied) until the unit announces itself again
    REMOVED = "removed"


UNIT_DOWN_STATES = (UnitState.OFFLINE, UnitState.LINK_DOWN, UnitState.UNREACHABLE)


class Health(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"          # the unit said a kernel operation is stuck: allocation avoids it


class VolumeState(StrEnum):
    ONLINE = "online"              # offered by a running unit
    OFFLINE = "offline"            # its unit is down
    MISSING = "missing"            # no longer reported
    CHANGED = "changed"            # reported with another extent or identity while assigned


class WipeState(StrEnum):
    """Whether a volume may hold a previous host's bytes (station/services/wipes.py)."""

    CLEAN = "clean"                # holds no host's data: may be handed out
    NEEDED = "needed"              # released: must be zeroed on its unit before anyone gets it
    RUNNING = "running"            # its unit is zeroing it
    FAILED = "failed"              # refused or failed on the unit (`wipe_detail`); retried later


class ExportState(StrEnum):
    PENDING = "pending"
    EXPORTED = "exported"
    REFUSED = "refused"
    WITHHELD = "withheld"


class MirrorState(StrEnum):
    """A mirror's health as its host last reported it (PUT /api/v1/mirrors/ID/health)."""

    UNKNOWN = "unknown"            # no report yet
    CLEAN = "clean"
    DEGRADED = "degraded"
    RESYNCING = "resyncing"
    FAILED = "failed"


class MemberState(StrEnum):
    """One mirror member as its host last reported it."""

    ACTIVE = "active"
    RESYNCING = "resyncing"
    FAULTY = "faulty"
    MISSING = "missing"
    SPARE = "spare"
    UNKNOWN = "unknown"


class TaskState(StrEnum):
    """Where a task stands (station/services/tasks.py)."""

    QUEUED = "queued"              # waiting for its object's lock
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"              # `error` says why; nothing was left half-done
    CANCELLED = "cancelled"        # cancelled while queued: nothing was done
    INTERRUPTED = "interrupted"    # the station stopped while it ran; its object was reconciled


TASK_FINAL_STATES = (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED, TaskState.INTERRUPTED)


class IdentityState(StrEnum):
    PENDING = "pending"
    ENROLLED = "enrolled"
    REVOKED = "revoked"


class UnitRow(Base):
    __tablename__ = "units"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    control_host: Mapped[str] = mapped_column(String(64))
    control_port: Mapped[int] = mapped_column(Integer)
    portal_address: Mapped[str] = mapped_column(String(64))
    portal_port: Mapped[int] = mapped_column(Integer, default=3260)
    dns_name: Mapped[str | None] = mapped_column(String(253), nullable=True)
    agent_version: Mapped[str] = mapped_column(String(32), default="")
    state: Mapped[str] = mapped_column(String(16), default="online")   # online | offline
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # ok | degraded (the unit said a kernel operation is stuck: allocation avoids it)
    health: Mapped[str] = mapped_column(String(16), default="ok")
    health_detail: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Bumped in the transaction of every change to what this unit must export; sent with every
    # EXPORTS, persisted by the unit, which refuses an older one (a stale backup of this database).
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    # The unit's last report of its disks (STORAGE_INFO `disks`, JSON; station/services/disks.py);
    # None for a unit that never sent one.
    disks: Mapped[str | None] = mapped_column(Text, nullable=True)
    volumes: Mapped[list["VolumeRow"]] = relationship(back_populates="unit")


class VolumeRow(Base):
    __tablename__ = "volumes"
    __table_args__ = (UniqueConstraint("unit_name", "device", name="uq_volume_unit_device"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    unit_name: Mapped[str] = mapped_column(ForeignKey("units.name"), index=True)
    device: Mapped[str] = mapped_column(String(32))
    disk: Mapped[str] = mapped_column(String(32))
    number: Mapped[int] = mapped_column(Integer)
    start_lba: Mapped[int] = mapped_column(BigInteger)
    length_blocks: Mapped[int] = mapped_column(BigInteger)
    end_lba: Mapped[int] = mapped_column(BigInteger)
    block_size: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger, index=True)
    uid: Mapped[str] = mapped_column(String(64), default="")
    # online: offered by a running unit; offline: its unit is down; missing: no longer reported;
    # changed: reported with another extent or identity while assigned (never exported again
    # until an operator releases it; `detail` says what changed)
    state: Mapped[str] = mapped_column(String(16), default="online")
    detail: Mapped[str | None] = mapped_column(String(255), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Only a clean volume is ever handed out; a release makes it `needed` in the same transaction
    # that deletes the assignment (WipeState).
    wipe_state: Mapped[str] = mapped_column(String(16), default=WipeState.CLEAN, index=True)
    wipe_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    wipe_done_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    wipe_total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    wipe_method: Mapped[str | None] = mapped_column(String(16), nullable=True)
    wipe_detail: Mapped[str | None] = mapped_column(String(255), nullable=True)
    wipe_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    unit: Mapped[UnitRow] = relationship(back_populates="volumes")
    assignment: Mapped["AssignmentRow | None"] = relationship(back_populates="volume")


class AssignmentRow(Base):
    __tablename__ = "assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # unique: the database itself refuses to give one volume to two hosts
    volume_id: Mapped[int] = mapped_column(ForeignKey("volumes.id"), unique=True)
    host_name: Mapped[str] = mapped_column(String(63), index=True)
    initiator_iqn: Mapped[str] = mapped_column(String(223))
    host_address: Mapped[str] = mapped_column(String(64))
    requested_bytes: Mapped[int] = mapped_column(BigInteger)
    target_iqn: Mapped[str] = mapped_column(String(223))
    lun: Mapped[int] = mapped_column(Integer, default=0)
    wwn: Mapped[str] = mapped_column(String(36), default="")
    # one-way CHAP (station/services/chap.py): the secret sealed with the data directory's key
    chap_user: Mapped[str] = mapped_column(String(64), default="")
    chap_secret_sealed: Mapped[str] = mapped_column(String(255), default="")
    # mutual CHAP (the target answers the host), when the host asked for it; sealed like the other
    mutual_user: Mapped[str] = mapped_column(String(64), default="")
    mutual_secret_sealed: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # pending | exported | refused | withheld, as the last push to the unit found it
    export_state: Mapped[str] = mapped_column(String(16), default="pending")
    export_detail: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # a member of a mirror (a RAID1 the host builds over two assignments on two units), or None
    mirror_id: Mapped[int | None] = mapped_column(ForeignKey("mirrors.id"), nullable=True, index=True)
    # MemberState, as the host last reported it
    member_state: Mapped[str] = mapped_column(String(16), default=MemberState.UNKNOWN)
    # fenced (a host takeover): its export withheld and its target dropped even under live sessions
    fenced: Mapped[bool] = mapped_column(Boolean, default=False)
    volume: Mapped[VolumeRow] = relationship(back_populates="assignment")
    mirror: Mapped["MirrorRow | None"] = relationship(back_populates="members")


class MirrorRow(Base):
    """A mirrored assignment: its members are ordinary assignments on different units."""

    __tablename__ = "mirrors"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host_name: Mapped[str] = mapped_column(String(63), index=True)
    requested_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default=MirrorState.UNKNOWN)
    sync_percent: Mapped[float | None] = mapped_column(Float, nullable=True)
    detail: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    members: Mapped[list[AssignmentRow]] = relationship(back_populates="mirror", order_by="AssignmentRow.id")


class PoolRow(Base):
    """The pool's identity (one row): sent with every EXPORTS, pinned by every unit."""

    __tablename__ = "pool"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pool_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class PendingDropRow(Base):
    """A released export the unit must drop even under live sessions (an operator's release)."""

    __tablename__ = "pending_drops"

    target_iqn: Mapped[str] = mapped_column(String(223), primary_key=True)
    unit_name: Mapped[str] = mapped_column(ForeignKey("units.name"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UnitIdentityRow(Base):
    """A unit's enrolled identity (station/services/enrolment.py): the one key its messages must be signed with.

    state: pending (announced, waiting for an operator) | enrolled | revoked. `offered_*` is the
    last other key seen under this name and refused (a second machine, or a new key awaiting an
    operator's re-approval); `refused_count` counts such messages.
    """

    __tablename__ = "unit_identities"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    public_key: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    first_address: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    enrolled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    offered_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    offered_fingerprint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    offered_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    offered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    refused_count: Mapped[int] = mapped_column(Integer, default=0)


class Role(StrEnum):
    """What a principal may do (station/services/auth.py PERMISSIONS)."""

    ADMIN = "admin"                # everything, users included
    OPERATOR = "operator"          # units, volumes, assignments, hosts, wipes
    VIEWER = "viewer"              # read only
    HOST = "host"                  # a host agent: only its own host's assignments


class UserRow(Base):
    """A person (or a script's account): an argon2 password hash and one role."""

    __tablename__ = "users"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class HostRow(Base):
    """An enrolled host: the initiator names its token may request storage with (space-separated)."""

    __tablename__ = "hosts"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    initiator_iqns: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    @property
    def initiators(self) -> list[str]:
        return self.initiator_iqns.split()


class TokenRow(Base):
    """An API token: only the SHA-256 of its secret is kept (tokens are random, 256 bits)."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    user_name: Mapped[str | None] = mapped_column(ForeignKey("users.name"), nullable=True, index=True)
    host_name: Mapped[str | None] = mapped_column(ForeignKey("hosts.name"), nullable=True, index=True)
    label: Mapped[str] = mapped_column(String(63), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditRow(Base):
    """One change asked of the station (every write, every login, every refusal): append-only.

    Rows are only ever added, and removed only by the retention sweep (station/services/audit.py).
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    principal: Mapped[str] = mapped_column(String(80), index=True)     # user:alice | host:host-b | anonymous
    source: Mapped[str] = mapped_column(String(64))                    # the client's address
    action: Mapped[str] = mapped_column(String(96), index=True)        # "POST /api/v1/assignments"
    object: Mapped[str] = mapped_column(String(255))                   # the path acted on
    outcome: Mapped[int] = mapped_column(Integer)                      # the HTTP status answered
    detail: Mapped[str | None] = mapped_column(String(1024), nullable=True)  # what changed (no secret)


class TaskRow(Base):
    """One change asked of the station (assign, release, wipe...), from queued to its end."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    object: Mapped[str] = mapped_column(String(255), index=True)       # "/volumes/17", "/hosts/host-b"
    requested_by: Mapped[str] = mapped_column(String(80))              # user:alice | host:host-b | station
    host_name: Mapped[str | None] = mapped_column(String(63), nullable=True, index=True)  # whose storage
    state: Mapped[str] = mapped_column(String(16), default=TaskState.QUEUED, index=True)
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    total_steps: Mapped[int] = mapped_column(BigInteger, default=1)
    message: Mapped[str] = mapped_column(String(255), default="")
    result: Mapped[str | None] = mapped_column(String(2048), nullable=True)   # JSON, no secret
    error: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    error_kind: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class GroupRow(Base):
    """A named set of users: a grant given to the group holds for each of its members."""

    __tablename__ = "groups"
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    created_by: Mapped[str] = mapped_column(String(80), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class GroupMemberRow(Base):
    __tablename__ = "group_members"
    group_name: Mapped[str] = mapped_column(ForeignKey("groups.name", ondelete="CASCADE"), primary_key=True)
    user_name: Mapped[str] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), primary_key=True,
                                           index=True)


class GrantRow(Base):
    """A role given to one user or to one group on one object (`/units/unit-a`, `/volumes/17`,
    `/hosts/host-b`), and with `propagate` on everything under it, beside the user's own role
    everywhere. Exactly one of `user_name` and `group_name` is set."""

    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("user_name", "role", "object", name="uq_grants_user_role_object"),
                      UniqueConstraint("group_name", "role", "object", name="uq_grants_group_role_object"),
                      CheckConstraint("(user_name IS NULL) != (group_name IS NULL)",
                                      name="ck_grants_user_or_group"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_name: Mapped[str | None] = mapped_column(ForeignKey("users.name", ondelete="CASCADE"), index=True,
                                                  nullable=True)
    group_name: Mapped[str | None] = mapped_column(ForeignKey("groups.name", ondelete="CASCADE"),
                                                   index=True, nullable=True)
    role: Mapped[str] = mapped_column(String(16))
    object: Mapped[str] = mapped_column(String(255))
    propagate: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(80), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
