"""audit: trigger functions with a fixed search_path and schema-qualified tables; nonces in canonical form

Revision ID: 0011_audit_fixed_search_path
Revises: 0010_audit_entry_mac
Create Date: 2026-12-12

1. The audit trigger functions of 0002 ran with the caller's search_path and named their tables unqualified:
   with `SET search_path = pg_temp, public` the service role shadowed `audit_entries` with a TEMP table and
   deleted a queued entry before it was chained. Every audit trigger function now names its tables as
   `<schema>.<table>` (the schema the migration runs in) and carries `SET search_path = <schema>, pg_temp`
   (pg_temp explicitly last). Only `audit_entries_extend_head` is SECURITY DEFINER (0009: the service role
   has no UPDATE on the head); the others read tables the service role may read and stay SECURITY INVOKER.
2. A nonce is exactly 32 lower-case hex digits (the replay check compared strings, the MAC check bytes, so
   an upper-cased copy of a queued row passed both). PostgreSQL: a CHECK on `audit_inbox.nonce` and
   `audit_entries.nonce` (NULL allowed: entries chained inline or before 0010 have none). SQLite: the same
   test (length and GLOB) as BEFORE INSERT triggers, because adding a CHECK there means copying the table,
   which drops its audit triggers; both tables refuse UPDATE already, so the triggers are the same rule.
   On PostgreSQL a table already holding a non-canonical nonce (a replay chained before this revision; the
   trail is append-only, so it cannot be fixed) gets the constraint NOT VALID: it holds for every new row,
   and the verifier reports the old row as forged.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_audit_fixed_search_path"
down_revision = "0010_audit_entry_mac"
branch_labels = None
depends_on = None

NONCE_PATTERN = "^[0-9a-f]{32}$"
NONCE_TABLES = ("audit_inbox", "audit_entries")

# name -> (attributes, body). `{s}` is the schema prefix: `"public".` after this revision, empty before it.
FUNCTIONS: dict[str, tuple[str, str]] = {
    "audit_reject_change": ("", """
    BEGIN
        RAISE EXCEPTION 'audit: % on % is not allowed: the audit trail is append-only', TG_OP, TG_TABLE_NAME;
    END"""),
    "audit_entries_extend_head": ("SECURITY DEFINER", """
    DECLARE
        head_seq bigint;
        head_hash varchar(64);
        added bigint;
        first_seq bigint;
        last_seq bigint;
        unlinked bigint;
        last_hash varchar(64);
    BEGIN
        SELECT seq, entry_hash INTO head_seq, head_hash FROM {s}audit_chain_head WHERE id = 1 FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'audit: the chain head row is missing';
        END IF;
        SELECT count(*), min(seq), max(seq) INTO added, first_seq, last_seq FROM new_entries;
        IF added = 0 THEN
            RETURN NULL;
        END IF;
        IF first_seq <> head_seq + 1 OR last_seq <> head_seq + added THEN
            RAISE EXCEPTION 'audit: entries %..% do not extend the chain head % (forks and gaps are refused)',
                first_seq, last_seq, head_seq;
        END IF;
        SELECT count(*) INTO unlinked
            FROM new_entries e LEFT JOIN new_entries p ON p.seq = e.seq - 1
            WHERE e.prev_hash IS DISTINCT FROM (CASE WHEN e.seq = first_seq THEN head_hash ELSE p.entry_hash END);
        IF unlinked > 0 THEN
            RAISE EXCEPTION 'audit: % new entries do not link to the entry before them (they must extend the chain head)',
                unlinked;
        END IF;
        SELECT entry_hash INTO last_hash FROM new_entries WHERE seq = last_seq;
        UPDATE {s}audit_chain_head SET seq = last_seq, entry_hash = last_hash WHERE id = 1;
        RETURN NULL;
    END"""),
    "audit_chain_head_forward": ("", """
    BEGIN
        IF NEW.id = OLD.id AND NEW.seq = OLD.seq AND NEW.entry_hash = OLD.entry_hash THEN
            RETURN NEW;
        END IF;
        IF NEW.id = OLD.id AND NEW.seq > OLD.seq
            AND EXISTS (SELECT 1 FROM {s}audit_entries WHERE seq = NEW.seq AND entry_hash = NEW.entry_hash)
            AND NOT EXISTS (SELECT 1 FROM {s}audit_entries WHERE seq > NEW.seq) THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit: the chain head only moves forward, to the newest entry';
    END"""),
    "audit_inbox_delete_chained": ("", """
    BEGIN
        IF EXISTS (SELECT 1 FROM {s}audit_entries WHERE inbox_id = OLD.id) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit: queued entry % is not chained yet and cannot be deleted', OLD.id;
    END"""),
    "audit_checkpoints_extend": ("", """
    DECLARE
        last_number bigint;
        last_signature varchar(128);
    BEGIN
        SELECT number, signature INTO last_number, last_signature
            FROM {s}audit_checkpoints ORDER BY number DESC LIMIT 1;
        IF NOT FOUND THEN
            IF NEW.number <> 1 OR NEW.prev_signature <> '' THEN
                RAISE EXCEPTION 'audit: the first checkpoint is number 1 with no previous signature';
            END IF;
        ELSIF NEW.number <> last_number + 1 OR NEW.prev_signature <> last_signature THEN
            RAISE EXCEPTION 'audit: checkpoint % does not extend checkpoint %', NEW.number, last_number;
        END IF;
        IF NEW.head_seq > (SELECT seq FROM {s}audit_chain_head WHERE id = 1) THEN
            RAISE EXCEPTION 'audit: checkpoint % is beyond the chain head', NEW.number;
        END IF;
        RETURN NEW;
    END"""),
}


def _function(name: str, attributes: str, body: str, *, prefix: str, search_path: str | None) -> str:
    """CREATE OR REPLACE keeps the owner and EXECUTE grants and resets every attribute not named."""
    settings = "" if search_path is None else f" SET search_path = {search_path}"
    return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql {attributes}{settings} "
            f"AS $${body.replace('{s}', prefix)}\n    $$")


def _schema() -> str:
    bind = op.get_bind()
    schema = bind.execute(sa.text("SELECT current_schema()")).scalar_one()
    return str(bind.dialect.identifier_preparer.quote(str(schema)))  # quoted only where needed


def _sqlite_nonce_trigger(table: str) -> str:
    return (
        f"CREATE TRIGGER {table}_nonce_canonical BEFORE INSERT ON {table} "
        "WHEN NEW.nonce IS NOT NULL AND NOT (typeof(NEW.nonce) = 'text' AND length(NEW.nonce) = 32 "
        "AND NEW.nonce NOT GLOB '*[^0-9a-f]*') BEGIN "
        f"SELECT RAISE(ABORT, 'audit: the nonce of {table} must be 32 lower-case hex digits'); END"
    )


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        for table in NONCE_TABLES:
            op.execute(_sqlite_nonce_trigger(table))
        return
    schema = _schema()
    for name, (attributes, body) in FUNCTIONS.items():
        op.execute(_function(name, attributes, body, prefix=f"{schema}.", search_path=f"{schema}, pg_temp"))
    for table in NONCE_TABLES:
        stale = bind.execute(sa.text(
            f"SELECT count(*) FROM {schema}.{table} WHERE nonce !~ :pattern"),  # noqa: S608 - fixed names
            {"pattern": NONCE_PATTERN}).scalar_one()
        op.execute(f"ALTER TABLE {schema}.{table} ADD CONSTRAINT ck_{table}_nonce_canonical "
                   f"CHECK (nonce ~ '{NONCE_PATTERN}')" + (" NOT VALID" if stale else ""))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        for table in NONCE_TABLES:
            op.execute(f"DROP TRIGGER {table}_nonce_canonical")
        return
    schema = _schema()
    for table in NONCE_TABLES:
        op.execute(f"ALTER TABLE {schema}.{table} DROP CONSTRAINT ck_{table}_nonce_canonical")
    # Back to 0002's functions, with 0009's attributes on the head function.
    for name, (attributes, body) in FUNCTIONS.items():
        definer = attributes == "SECURITY DEFINER"
        op.execute(_function(name, attributes, body, prefix="",
                             search_path=f"{schema}, pg_temp" if definer else None))
