"""audit: hash-chained audit entries, the inbox, the chain head and signed checkpoints, all append-only

Revision ID: 0002_audit
Revises: 0001_resources
Create Date: 2026-11-28

The triggers make the trail append-only for everyone short of a superuser who disables them (C6); the
verifier and the externally exported checkpoints catch what such a superuser does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_audit"
down_revision = "0001_resources"
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64


def _content_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_type", sa.String(16), nullable=False),
        sa.Column("actor_id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(48), nullable=False),
        sa.Column("ticket_id", sa.String(128), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("grant_id", sa.String(128), nullable=True),
        sa.Column("saw_id", sa.String(128), nullable=True),
        sa.Column("resource_id", sa.String(128), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
    ]


def _seq_type() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


PG_FUNCTIONS = [
    """
    CREATE FUNCTION audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'audit: % on % is not allowed: the audit trail is append-only', TG_OP, TG_TABLE_NAME;
    END $$
    """,
    # Statement level with a transition table: one check and one head update per INSERT, however many rows
    # (a row-level update of the one head row would pile up row versions inside a sequencer batch).
    """
    CREATE FUNCTION audit_entries_extend_head() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        head_seq bigint;
        head_hash varchar(64);
        added bigint;
        first_seq bigint;
        last_seq bigint;
        unlinked bigint;
        last_hash varchar(64);
    BEGIN
        SELECT seq, entry_hash INTO head_seq, head_hash FROM audit_chain_head WHERE id = 1 FOR UPDATE;
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
        UPDATE audit_chain_head SET seq = last_seq, entry_hash = last_hash WHERE id = 1;
        RETURN NULL;
    END $$
    """,
    """
    CREATE FUNCTION audit_chain_head_forward() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NEW.id = OLD.id AND NEW.seq = OLD.seq AND NEW.entry_hash = OLD.entry_hash THEN
            RETURN NEW;
        END IF;
        IF NEW.id = OLD.id AND NEW.seq > OLD.seq
            AND EXISTS (SELECT 1 FROM audit_entries WHERE seq = NEW.seq AND entry_hash = NEW.entry_hash)
            AND NOT EXISTS (SELECT 1 FROM audit_entries WHERE seq > NEW.seq) THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit: the chain head only moves forward, to the newest entry';
    END $$
    """,
    """
    CREATE FUNCTION audit_inbox_delete_chained() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM audit_entries WHERE inbox_id = OLD.id) THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION 'audit: queued entry % is not chained yet and cannot be deleted', OLD.id;
    END $$
    """,
    """
    CREATE FUNCTION audit_checkpoints_extend() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        last_number bigint;
        last_signature varchar(128);
    BEGIN
        SELECT number, signature INTO last_number, last_signature
            FROM audit_checkpoints ORDER BY number DESC LIMIT 1;
        IF NOT FOUND THEN
            IF NEW.number <> 1 OR NEW.prev_signature <> '' THEN
                RAISE EXCEPTION 'audit: the first checkpoint is number 1 with no previous signature';
            END IF;
        ELSIF NEW.number <> last_number + 1 OR NEW.prev_signature <> last_signature THEN
            RAISE EXCEPTION 'audit: checkpoint % does not extend checkpoint %', NEW.number, last_number;
        END IF;
        IF NEW.head_seq > (SELECT seq FROM audit_chain_head WHERE id = 1) THEN
            RAISE EXCEPTION 'audit: checkpoint % is beyond the chain head', NEW.number;
        END IF;
        RETURN NEW;
    END $$
    """,
]

PG_TRIGGERS = [
    "CREATE TRIGGER audit_entries_append_only BEFORE UPDATE OR DELETE ON audit_entries "
    "FOR EACH ROW EXECUTE FUNCTION audit_reject_change()",
    "CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change()",
    "CREATE TRIGGER audit_entries_extend_head AFTER INSERT ON audit_entries REFERENCING NEW TABLE AS new_entries "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_entries_extend_head()",
    "CREATE TRIGGER audit_inbox_no_update BEFORE UPDATE ON audit_inbox "
    "FOR EACH ROW EXECUTE FUNCTION audit_reject_change()",
    "CREATE TRIGGER audit_inbox_delete_chained BEFORE DELETE ON audit_inbox "
    "FOR EACH ROW EXECUTE FUNCTION audit_inbox_delete_chained()",
    "CREATE TRIGGER audit_inbox_no_truncate BEFORE TRUNCATE ON audit_inbox "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change()",
    "CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head "
    "FOR EACH ROW EXECUTE FUNCTION audit_chain_head_forward()",
    "CREATE TRIGGER audit_chain_head_no_delete BEFORE DELETE ON audit_chain_head "
    "FOR EACH ROW EXECUTE FUNCTION audit_reject_change()",
    "CREATE TRIGGER audit_chain_head_no_truncate BEFORE TRUNCATE ON audit_chain_head "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change()",
    "CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints "
    "FOR EACH ROW EXECUTE FUNCTION audit_reject_change()",
    "CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change()",
    "CREATE TRIGGER audit_checkpoints_extend BEFORE INSERT ON audit_checkpoints "
    "FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_extend()",
]

PG_FUNCTION_NAMES = [
    "audit_reject_change", "audit_entries_extend_head", "audit_chain_head_forward",
    "audit_inbox_delete_chained", "audit_checkpoints_extend",
]


def _sqlite_reject(name: str, event: str, table: str) -> str:
    return (
        f"CREATE TRIGGER {name} BEFORE {event} ON {table} BEGIN "
        f"SELECT RAISE(ABORT, 'audit: {event} on {table} is not allowed: the audit trail is append-only'); END"
    )


SQLITE_TRIGGERS = [
    _sqlite_reject("audit_entries_no_update", "UPDATE", "audit_entries"),
    _sqlite_reject("audit_entries_no_delete", "DELETE", "audit_entries"),
    """
    CREATE TRIGGER audit_entries_extends_head BEFORE INSERT ON audit_entries BEGIN
        SELECT RAISE(ABORT, 'audit: the entry does not extend the chain head (forks and gaps are refused)')
        WHERE NOT EXISTS (
            SELECT 1 FROM audit_chain_head WHERE id = 1 AND seq + 1 = NEW.seq AND entry_hash = NEW.prev_hash
        );
    END
    """,
    """
    CREATE TRIGGER audit_entries_move_head AFTER INSERT ON audit_entries BEGIN
        UPDATE audit_chain_head SET seq = NEW.seq, entry_hash = NEW.entry_hash WHERE id = 1;
    END
    """,
    _sqlite_reject("audit_inbox_no_update", "UPDATE", "audit_inbox"),
    """
    CREATE TRIGGER audit_inbox_delete_chained BEFORE DELETE ON audit_inbox
    WHEN NOT EXISTS (SELECT 1 FROM audit_entries WHERE inbox_id = OLD.id) BEGIN
        SELECT RAISE(ABORT, 'audit: a queued entry is not chained yet and cannot be deleted');
    END
    """,
    """
    CREATE TRIGGER audit_chain_head_forward BEFORE UPDATE ON audit_chain_head
    WHEN NOT (NEW.id = OLD.id AND (
        (NEW.seq = OLD.seq AND NEW.entry_hash = OLD.entry_hash)
        OR (NEW.seq = OLD.seq + 1
            AND EXISTS (SELECT 1 FROM audit_entries WHERE seq = NEW.seq AND entry_hash = NEW.entry_hash))
    ))
    BEGIN
        SELECT RAISE(ABORT, 'audit: the chain head only moves forward, to the newest entry');
    END
    """,
    _sqlite_reject("audit_chain_head_no_delete", "DELETE", "audit_chain_head"),
    _sqlite_reject("audit_checkpoints_no_update", "UPDATE", "audit_checkpoints"),
    _sqlite_reject("audit_checkpoints_no_delete", "DELETE", "audit_checkpoints"),
    """
    CREATE TRIGGER audit_checkpoints_extend BEFORE INSERT ON audit_checkpoints BEGIN
        SELECT RAISE(ABORT, 'audit: the checkpoint does not extend the previous one')
        WHERE NOT (
            (NOT EXISTS (SELECT 1 FROM audit_checkpoints) AND NEW.number = 1 AND NEW.prev_signature = '')
            OR EXISTS (
                SELECT 1 FROM audit_checkpoints c
                WHERE c.number = NEW.number - 1 AND c.signature = NEW.prev_signature
                  AND c.number = (SELECT MAX(number) FROM audit_checkpoints)
            )
        );
        SELECT RAISE(ABORT, 'audit: the checkpoint is beyond the chain head')
        WHERE NEW.head_seq > (SELECT seq FROM audit_chain_head WHERE id = 1);
    END
    """,
]


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("seq", _seq_type(), autoincrement=False, nullable=False),
        *_content_columns(),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.Column("inbox_id", _seq_type(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_audit_entries"),
    )
    op.create_index("ix_audit_entries_recorded_at", "audit_entries", ["recorded_at"])
    op.create_index("ix_audit_entries_request_id", "audit_entries", ["request_id"])
    op.create_index("ix_audit_entries_grant_id", "audit_entries", ["grant_id"])
    op.create_index(
        "uq_audit_entries_inbox_id", "audit_entries", ["inbox_id"], unique=True,
        postgresql_where=sa.text("inbox_id IS NOT NULL"), sqlite_where=sa.text("inbox_id IS NOT NULL"),
    )
    op.create_table(
        "audit_inbox",
        sa.Column("id", _seq_type(), autoincrement=True, nullable=False),
        *_content_columns(),
        sa.PrimaryKeyConstraint("id", name="pk_audit_inbox"),
        # SQLite must never reuse an inbox id: a chained entry's `inbox_id` would vouch for a new row.
        sqlite_autoincrement=True,
    )
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("entry_hash", sa.String(64), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_audit_chain_head_single_row"),
        sa.PrimaryKeyConstraint("id", name="pk_audit_chain_head"),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("number", _seq_type(), autoincrement=False, nullable=False),
        sa.Column("head_seq", sa.BigInteger(), nullable=False),
        sa.Column("head_hash", sa.String(64), nullable=False),
        sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("prev_signature", sa.String(128), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("number", name="pk_audit_checkpoints"),
    )
    op.execute(
        sa.text("INSERT INTO audit_chain_head (id, seq, entry_hash) VALUES (1, 0, :genesis)").bindparams(
            genesis=GENESIS_HASH
        )
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in [*PG_FUNCTIONS, *PG_TRIGGERS]:
            op.execute(statement)
    else:
        for statement in SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    # Dropping a table drops its triggers on both databases; the PostgreSQL functions go after them.
    op.drop_table("audit_checkpoints")
    op.drop_table("audit_chain_head")
    op.drop_table("audit_inbox")
    op.drop_index("uq_audit_entries_inbox_id", table_name="audit_entries")
    op.drop_index("ix_audit_entries_grant_id", table_name="audit_entries")
    op.drop_index("ix_audit_entries_request_id", table_name="audit_entries")
    op.drop_index("ix_audit_entries_recorded_at", table_name="audit_entries")
    op.drop_table("audit_entries")
    if op.get_bind().dialect.name == "postgresql":
        for name in PG_FUNCTION_NAMES:
            op.execute(f"DROP FUNCTION IF EXISTS {name}()")
