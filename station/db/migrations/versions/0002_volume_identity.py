"""Volume identity and export safety: partition uid, unit serials, pool identity, generations.

Revision ID: 0002_volume_identity
Revises: 0001
"""
import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0002_volume_identity"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("units") as b:
        b.add_column(sa.Column("health", sa.String(16), nullable=False, server_default="ok"))
        b.add_column(sa.Column("health_detail", sa.String(255), nullable=True))
        b.add_column(sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"))
    with op.batch_alter_table("volumes") as b:
        b.add_column(sa.Column("uid", sa.String(64), nullable=False, server_default=""))
        b.add_column(sa.Column("detail", sa.String(255), nullable=True))
    with op.batch_alter_table("assignments") as b:
        b.add_column(sa.Column("wwn", sa.String(36), nullable=False, server_default=""))
        b.add_column(sa.Column("export_state", sa.String(16), nullable=False, server_default="pending"))
        b.add_column(sa.Column("export_detail", sa.String(255), nullable=True))
    pool = op.create_table(
        "pool",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("pool_id", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # NOTE: made here, once per database: a fresh database is a different pool to every unit.
    op.bulk_insert(pool, [{"id": 1, "pool_id": str(uuid.uuid4()), "created_at": datetime.now(UTC)}])
    op.create_table(
        "pending_drops",
        sa.Column("target_iqn", sa.String(223), primary_key=True),
        sa.Column("unit_name", sa.String(63), sa.ForeignKey("units.name"), nullable=False, index=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pending_drops")
    op.drop_table("pool")
    with op.batch_alter_table("assignments") as b:
        b.drop_column("export_detail")
        b.drop_column("export_state")
        b.drop_column("wwn")
    with op.batch_alter_table("volumes") as b:
        b.drop_column("detail")
        b.drop_column("uid")
    with op.batch_alter_table("units") as b:
        b.drop_column("generation")
        b.drop_column("health_detail")
        b.drop_column("health")
