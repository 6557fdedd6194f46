"""Authentication: users (argon2 hashes, roles, lockout), enrolled hosts, API tokens (hashed).

Revision ID: 0005_auth
Revises: 0004_volume_wipe
"""
import sqlalchemy as sa
from alembic import op

revision = "0005_auth"
down_revision = "0004_volume_wipe"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("failed_logins", sa.Integer, nullable=False, server_default="0"),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("initiator_iqns", sa.String(2048), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("user_name", sa.String(63), sa.ForeignKey("users.name"), nullable=True),
        sa.Column("host_name", sa.String(63), sa.ForeignKey("hosts.name"), nullable=True),
        sa.Column("label", sa.String(63), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_tokens_user_name", "tokens", ["user_name"])
    op.create_index("ix_tokens_host_name", "tokens", ["host_name"])


def downgrade() -> None:
    op.drop_index("ix_tokens_host_name", "tokens")
    op.drop_index("ix_tokens_user_name", "tokens")
    op.drop_table("tokens")
    op.drop_table("hosts")
    op.drop_table("users")
