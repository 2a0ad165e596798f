"""Migration 0002_audit upgrades and downgrades cleanly on both databases, triggers and functions included."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from app import migrate
from tests.fixtures.database import create_pg_database, drop_pg_database, worker_id

AUDIT_TABLES = {"audit_entries", "audit_inbox", "audit_chain_head", "audit_checkpoints"}


@pytest.fixture
def empty_database(db_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(async URL, sync URL) of an empty database."""
    if db_kind == "sqlite":
        path = tmp_path / "migrations.db"
        yield f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}"
        return
    name = f"voicelog_audit_migrations_{worker_id(request.config)}"
    url = create_pg_database(name)
    yield url, url.replace("+asyncpg", "+psycopg")
    drop_pg_database(name)


def _inspect(sync_url: str) -> tuple[set[str], set[str], set[str], tuple[int, str] | None]:
    """Tables, audit triggers, audit functions (PostgreSQL), and the chain head row."""
    engine = sa.create_engine(sync_url)
    try:
        with engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
            if engine.dialect.name == "postgresql":
                triggers = set(conn.execute(sa.text(
                    "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgname LIKE 'audit_%'")).scalars())
                functions = set(conn.execute(sa.text(
                    "SELECT proname FROM pg_proc WHERE proname LIKE 'audit_%'")).scalars())
            else:
                triggers = set(conn.execute(sa.text(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'audit_%'")).scalars())
                functions = set()
            head = None
            if "audit_chain_head" in tables:
                row = conn.execute(sa.text("SELECT seq, entry_hash FROM audit_chain_head")).one()
                head = (int(row[0]), str(row[1]))
        return tables, triggers, functions, head
    finally:
        engine.dispose()


def test_audit_migration_upgrades_downgrades_and_upgrades_again(empty_database: tuple[str, str], db_kind: str
                                                                ) -> None:
    url, sync_url = empty_database
    migrate.upgrade(url, "0002_audit")
    tables, triggers, functions, head = _inspect(sync_url)
    assert tables >= AUDIT_TABLES
    assert head == (0, "0" * 64)
    expected_triggers = {"audit_entries_append_only", "audit_entries_no_truncate", "audit_entries_extend_head",
                         "audit_inbox_delete_chained", "audit_chain_head_forward", "audit_checkpoints_extend"} \
        if db_kind == "postgresql" else \
        {"audit_entries_no_update", "audit_entries_no_delete", "audit_entries_extends_head",
         "audit_entries_move_head", "audit_inbox_delete_chained", "audit_chain_head_forward",
         "audit_checkpoints_extend"}
    assert triggers >= expected_triggers
    if db_kind == "postgresql":
        assert functions == {"audit_reject_change", "audit_entries_extend_head", "audit_chain_head_forward",
                             "audit_inbox_delete_chained", "audit_checkpoints_extend"}

    migrate.downgrade(url, "0001_resources")
    tables, triggers, functions, head = _inspect(sync_url)
    assert not tables & AUDIT_TABLES
    assert (triggers, functions, head) == (set(), set(), None)

    migrate.upgrade(url)
    assert _inspect(sync_url)[0] >= AUDIT_TABLES


def _columns(sync_url: str, table: str) -> set[str]:
    engine = sa.create_engine(sync_url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def test_entry_mac_migration_adds_and_removes_its_columns_and_keeps_the_triggers(
    empty_database: tuple[str, str], db_kind: str
) -> None:
    url, sync_url = empty_database
    migrate.upgrade(url, "0009_audit_head_definer")
    before = _inspect(sync_url)
    migrate.upgrade(url, "0010_audit_entry_mac")
    assert {"mac", "nonce"} <= _columns(sync_url, "audit_entries")
    assert {"nonce", "writer_mac"} <= _columns(sync_url, "audit_inbox")
    assert _inspect(sync_url)[1:] == before[1:]  # triggers, functions and the head row untouched
    migrate.downgrade(url, "0009_audit_head_definer")
    assert not {"mac", "nonce"} & _columns(sync_url, "audit_entries")
    assert not {"nonce", "writer_mac"} & _columns(sync_url, "audit_inbox")
    assert _inspect(sync_url) == before
    migrate.upgrade(url)
    assert "mac" in _columns(sync_url, "audit_entries")
