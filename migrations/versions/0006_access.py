"""access requests and grants (placeholder: filled by the work that needs it)

Revision ID: 0006_access
Revises: 0005_staff_saw
Create Date: 2026-11-28
"""

from __future__ import annotations

revision = "0006_access"
down_revision = "0005_staff_saw"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
