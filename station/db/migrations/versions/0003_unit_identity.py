"""Unit identities: each unit's enrolled Ed25519 public key, its enrolment state and refusals.

Revision ID: 0003_unit_identity
Revises: 0002_volume_identity
"""
import sqlalchemy as sa
from alembic import op

revision = "0003_unit_identity"
down_revision = "0002_volume_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # NOTE: no foreign key to units: a pending unit has no pool record yet, and a revoked one
    # keeps its identity row (and its refusals) after an operator removes it from the pool.
    op.create_table(
        "unit_identities",
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("first_address", sa.String(64), nullable=False, server_default=""),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("offered_key", sa.String(64), nullable=True),
        sa.Column("offered_fingerprint", sa.String(64), nullable=True),
        sa.Column("offered_address", sa.String(64), nullable=True),
        sa.Column("offered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refused_count", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_unit_identities_state", "unit_identities", ["state"])


def downgrade() -> None:
    op.drop_index("ix_unit_identities_state", "unit_identities")
    op.drop_table("unit_identities")
