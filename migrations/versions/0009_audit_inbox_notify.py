"""audit inbox: NOTIFY the sequencers when entries are queued, so they need not poll (PostgreSQL only)

Revision ID: 0009_audit_inbox_notify
Revises: 0008_console_sessions
Create Date: 2026-11-28
"""

from __future__ import annotations

from alembic import op

revision = "0009_audit_inbox_notify"
down_revision = "0008_console_sessions"
branch_labels = None
depends_on = None

# One notification per inserting statement; PostgreSQL delivers it at commit (never for a rollback) and
# folds identical ones of a transaction into one. The payload is empty: listeners learn "look now", never
# what was written.
FUNCTION = """
CREATE FUNCTION audit_inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('voicelog_audit_inbox', '');
    RETURN NULL;
END $$
"""
TRIGGER = ("CREATE TRIGGER audit_inbox_notify AFTER INSERT ON audit_inbox "
           "FOR EACH STATEMENT EXECUTE FUNCTION audit_inbox_notify()")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite chains each entry as it is written; there is no inbox to wait for
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER audit_inbox_notify ON audit_inbox")
    op.execute("DROP FUNCTION audit_inbox_notify()")
