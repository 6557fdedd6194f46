"""Mutual CHAP per assignment: the target's credentials, sealed at rest like the host's.

Revision ID: 0010_mutual_chap
Revises: 0009_grants
"""
import sqlalchemy as sa
from alembic import op

revision = "0010_mutual_chap"
down_revision = "0009_grants"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("assignments") as b:
        b.add_column(sa.Column("mutual_user", sa.String(64), nullable=False, server_default=""))
        b.add_column(sa.Column("mutual_secret_sealed", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("assignments") as b:
        b.drop_column("mutual_secret_sealed")
        b.drop_column("mutual_user")
