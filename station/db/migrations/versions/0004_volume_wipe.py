"""Volume wipes: a released volume is zeroed on its unit before it is handed out again.

Revision ID: 0004_volume_wipe
Revises: 0003_unit_identity
"""
import sqlalchemy as sa
from alembic import op

revision = "0004_volume_wipe"
down_revision = "0003_unit_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOTE: volumes released before this migration were handed back unwiped (the old behaviour);
    # they are taken as clean here, as they were then. Every release from now on marks `needed`.
    with op.batch_alter_table("volumes") as b:
        b.add_column(sa.Column("wipe_state", sa.String(16), nullable=False, server_default="clean"))
        b.add_column(sa.Column("wipe_id", sa.String(64), nullable=True))
        b.add_column(sa.Column("wipe_done_bytes", sa.BigInteger, nullable=False, server_default="0"))
        b.add_column(sa.Column("wipe_total_bytes", sa.BigInteger, nullable=False, server_default="0"))
        b.add_column(sa.Column("wipe_method", sa.String(16), nullable=True))
        b.add_column(sa.Column("wipe_detail", sa.String(255), nullable=True))
        b.add_column(sa.Column("wipe_updated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_volumes_wipe_state", "volumes", ["wipe_state"])


def downgrade() -> None:
    op.drop_index("ix_volumes_wipe_state", "volumes")
    with op.batch_alter_table("volumes") as b:
        for c in ("wipe_updated_at", "wipe_detail", "wipe_method", "wipe_total_bytes",
                  "wipe_done_bytes", "wipe_id", "wipe_state"):
            b.drop_column(c)
