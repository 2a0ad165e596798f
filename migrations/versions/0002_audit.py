"""audit: hash-chained audit entries and signed checkpoints (placeholder until the audit work lands)

Revision ID: 0002_audit
Revises: 0001_resources
Create Date: 2026-11-28
"""

from __future__ import annotations

revision = "0002_audit"
down_revision = "0001_resources"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
