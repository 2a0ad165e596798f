"""resources: customer Voice Live resources

Revision ID: 0001_resources
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_resources"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("upstream_endpoint", sa.String(512), nullable=False),
        sa.Column("owner_tenant", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_resources"),
    )
    op.create_index("ix_resources_name", "resources", ["name"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_resources_name", table_name="resources")
    op.drop_table("resources")
