"""CHAP: each assignment's one-way CHAP user and its secret, sealed with the data directory's key.

Revision ID: 0007_chap
Revises: 0006_audit
"""
import sqlalchemy as sa
from alembic import op

revision = "0007_chap"
down_revision = "0006_audit"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOTE: assignments made before CHAP keep none (empty): their exports stay as they are.
    with op.batch_alter_table("assignments") as b:
        b.add_column(sa.Column("chap_user", sa.String(64), nullable=False, server_default=""))
        b.add_column(sa.Column("chap_secret_sealed", sa.String(255), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("assignments") as b:
        b.drop_column("chap_secret_sealed")
        b.drop_column("chap_user")
