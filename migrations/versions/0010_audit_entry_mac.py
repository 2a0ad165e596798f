"""audit: entry MACs (`mac`, `nonce` on audit_entries; `nonce`, `writer_mac` on audit_inbox)

Revision ID: 0010_audit_entry_mac
Revises: 0009_audit_head_definer
Create Date: 2026-12-10

An entry's MAC binds it to a key held outside the database, so an entry (or a queued row) inserted with the
service's database role alone verifies as `forged` (docs/AUDIT.md, "Entry MACs"). The columns sit beside the
hash, not in it: entry hashes and checkpoints keep their v1 encoding. Entries chained before this revision
have no MAC; `entry_mac_from_seq` tells the verifier where MACs begin on an upgraded chain.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_audit_entry_mac"
down_revision = "0009_audit_head_definer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("audit_entries", sa.Column("mac", sa.String(86), nullable=True))
    op.add_column("audit_entries", sa.Column("nonce", sa.String(32), nullable=True))
    op.create_index("ix_audit_entries_nonce", "audit_entries", ["nonce"])
    op.add_column("audit_inbox", sa.Column("nonce", sa.String(32), nullable=True))
    op.add_column("audit_inbox", sa.Column("writer_mac", sa.String(86), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN on both databases (SQLite 3.35+): a batch copy would drop the triggers.
    op.drop_index("ix_audit_entries_nonce", table_name="audit_entries")
    for table, column in (("audit_inbox", "writer_mac"), ("audit_inbox", "nonce"),
                          ("audit_entries", "nonce"), ("audit_entries", "mac")):
        op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
