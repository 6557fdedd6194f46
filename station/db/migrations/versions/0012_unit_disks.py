"""Units' disks: each unit's last report of its disks and partition tables (issue 7).

Revision ID: 0012_unit_disks
Revises: 0011_groups
"""
import sqlalchemy as sa
from alembic import op

revision = "0012_unit_disks"
down_revision = "0011_groups"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("units") as b:
        b.add_column(sa.Column("disks", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("units") as b:
        b.drop_column("disks")
