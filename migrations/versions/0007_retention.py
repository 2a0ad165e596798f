"""retention bookkeeping (placeholder: filled by the work that needs it)

Revision ID: 0007_retention
Revises: 0006_access
Create Date: 2026-11-28
"""

from __future__ import annotations

revision = "0007_retention"
down_revision = "0006_access"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
