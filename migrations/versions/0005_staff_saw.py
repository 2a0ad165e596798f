"""staff, teams and secure access workstations (placeholder: filled by the work that needs it)

Revision ID: 0005_staff_saw
Revises: 0004_recordings
Create Date: 2026-11-28
"""

from __future__ import annotations

revision = "0005_staff_saw"
down_revision = "0004_recordings"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
