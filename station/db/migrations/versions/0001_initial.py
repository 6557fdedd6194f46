"""Initial schema: units, volumes, assignments.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "units",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("control_host", sa.String(64), nullable=False),
        sa.Column("control_port", sa.Integer, nullable=False),
        sa.Column("portal_address", sa.String(64), nullable=False),
        sa.Column("portal_port", sa.Integer, nullable=False),
        sa.Column("dns_name", sa.String(253), nullable=True),
        sa.Column("agent_version", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "volumes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("unit_name", sa.String(63), sa.ForeignKey("units.name"), nullable=False, index=True),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("disk", sa.String(32), nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        sa.Column("start_lba", sa.BigInteger, nullable=False),
        sa.Column("length_blocks", sa.BigInteger, nullable=False),
        sa.Column("end_lba", sa.BigInteger, nullable=False),
        sa.Column("block_size", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False, index=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("unit_name", "device", name="uq_volume_unit_device"),
    )
    op.create_table(
        "assignments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("volume_id", sa.Integer, sa.ForeignKey("volumes.id"), nullable=False, unique=True),
        sa.Column("host_name", sa.String(63), nullable=False, index=True),
        sa.Column("initiator_iqn", sa.String(223), nullable=False),
        sa.Column("host_address", sa.String(64), nullable=False),
        sa.Column("requested_bytes", sa.BigInteger, nullable=False),
        sa.Column("target_iqn", sa.String(223), nullable=False),
        sa.Column("lun", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("assignments")
    op.drop_table("volumes")
    op.drop_table("units")
