"""console sessions shared by every replica: row keyed by SHA-256 of the cookie, secrets sealed under it

Revision ID: 0008_console_sessions
Revises: 0007_retention
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_console_sessions"
down_revision = "0007_retention"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sealed", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id_sha256", name="pk_console_sessions"),
    )
    op.create_index("ix_console_sessions_kind_expires_at", "console_sessions", ["kind", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_kind_expires_at", table_name="console_sessions")
    op.drop_table("console_sessions")
