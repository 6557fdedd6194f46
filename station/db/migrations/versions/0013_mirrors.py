"""Mirrors (issue 8): a volume pair on two units as one mirrored assignment; member health; fencing.

Revision ID: 0013_mirrors
Revises: 0012_unit_disks
"""
import sqlalchemy as sa
from alembic import op

revision = "0013_mirrors"
down_revision = "0012_unit_disks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mirrors",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("host_name", sa.String(63), nullable=False),
        sa.Column("requested_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="unknown"),
        sa.Column("sync_percent", sa.Float, nullable=True),
        sa.Column("detail", sa.String(255), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_mirrors_host_name", "mirrors", ["host_name"])
    with op.batch_alter_table("assignments") as b:
        b.add_column(sa.Column("mirror_id", sa.Integer, nullable=True))
        b.add_column(sa.Column("member_state", sa.String(16), nullable=False, server_default="unknown"))
        b.add_column(sa.Column("fenced", sa.Boolean, nullable=False, server_default=sa.false()))
        b.create_foreign_key("fk_assignments_mirror_id_mirrors", "mirrors", ["mirror_id"], ["id"])
        b.create_index("ix_assignments_mirror_id", ["mirror_id"])


def downgrade() -> None:
    with op.batch_alter_table("assignments") as b:
        b.drop_index("ix_assignments_mirror_id")
        b.drop_constraint("fk_assignments_mirror_id_mirrors", type_="foreignkey")
        b.drop_column("fenced")
        b.drop_column("member_state")
        b.drop_column("mirror_id")
    op.drop_index("ix_mirrors_host_name", "mirrors")
    op.drop_table("mirrors")
