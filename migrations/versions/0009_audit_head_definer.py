"""audit: the chain-head trigger runs as the tables' owner, so the service role needs no UPDATE on the head

Revision ID: 0009_audit_head_definer
Revises: 0008_console_sessions
Create Date: 2026-12-10

With two roles (docs/AUDIT.md, "Database roles") the service role holds only SELECT and INSERT on
`audit_entries`; the AFTER INSERT trigger that moves `audit_chain_head` forward must still update the head.
It becomes SECURITY DEFINER (it runs as the function's owner, the migrating role) with a fixed search_path
(the schema it was made in, then pg_temp last), so a role that may create objects elsewhere cannot slip a
table or operator in front of it. EXECUTE is taken from PUBLIC: a trigger fires whatever EXECUTE says, and
nobody has a reason to call it otherwise. The other audit trigger functions only read, or raise, and stay
SECURITY INVOKER. SQLite has no roles: nothing changes there.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_audit_head_definer"
down_revision = "0008_console_sessions"
branch_labels = None
depends_on = None

FUNCTION = "audit_entries_extend_head()"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    quoted = bind.dialect.identifier_preparer.quote_identifier(str(schema))
    op.execute(f"ALTER FUNCTION {FUNCTION} SECURITY DEFINER SET search_path = {quoted}, pg_temp")
    op.execute(f"REVOKE EXECUTE ON FUNCTION {FUNCTION} FROM PUBLIC")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"GRANT EXECUTE ON FUNCTION {FUNCTION} TO PUBLIC")
    op.execute(f"ALTER FUNCTION {FUNCTION} SECURITY INVOKER RESET search_path")
