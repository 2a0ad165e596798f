"""Every migration upgrades and downgrades cleanly on PostgreSQL and SQLite."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from app import migrate
from tests.fixtures.database import create_pg_database, drop_pg_database, worker_id


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "sqlite":
        path = tmp_path / "m.db"
        yield f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}"
        return
    name = f"voicelog_migrations_{worker_id(request.config)}"
    url = create_pg_database(name)
    yield url, url.replace("+asyncpg", "+psycopg")
    drop_pg_database(name)


def tables(sync_url: str) -> set[str]:
    engine = create_engine(sync_url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def schema(sync_url: str) -> set[str]:
    """Tables, columns, triggers and (PostgreSQL) functions: what a revision may add and its downgrade must
    remove."""
    engine = create_engine(sync_url)
    try:
        with engine.connect() as conn:
            inspector = inspect(conn)
            names = set(inspector.get_table_names()) - {"alembic_version"}
            found = {f"table:{t}" for t in names}
            found |= {f"column:{t}.{c['name']}" for t in names for c in inspector.get_columns(t)}
            if engine.dialect.name == "postgresql":
                found |= {f"trigger:{t}" for t in conn.execute(text(
                    "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")).scalars()}
                found |= {f"function:{f}" for f in conn.execute(text(
                    "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = 'public'")).scalars()}
                # How a function runs is part of what a revision makes (0009: SECURITY DEFINER, fixed path;
                # 0011: a fixed search_path on every audit trigger function, schema-qualified tables).
                found |= {f"definer:{name}:{config}" for name, config in conn.execute(text(
                    "SELECT p.proname, array_to_string(p.proconfig, ',') FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public' AND p.prosecdef"))}
                found |= {f"config:{name}:{config}" for name, config in conn.execute(text(
                    "SELECT p.proname, array_to_string(p.proconfig, ',') FROM pg_proc p "
                    "JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = 'public' AND p.proconfig IS NOT NULL"))}
                found |= {f"qualified:{name}" for name in conn.execute(text(
                    "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                    "WHERE n.nspname = 'public' AND p.prosrc LIKE '%public.audit_%'")).scalars()}
                found |= {f"check:{table}.{name}" for table, name in conn.execute(text(
                    "SELECT c.conrelid::regclass::text, c.conname FROM pg_constraint c "
                    "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'public' AND c.contype = 'c'"))}
            else:
                found |= {f"trigger:{t}" for t in conn.execute(text(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger'")).scalars()}
        return found
    finally:
        engine.dispose()


def current_revision(sync_url: str) -> str:
    engine = create_engine(sync_url)
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    finally:
        engine.dispose()


def test_upgrade_to_head_then_downgrade_to_base_and_back(empty_db: tuple[str, str]) -> None:
    url, sync_url = empty_db
    migrate.upgrade(url)
    assert "resources" in tables(sync_url)
    migrate.downgrade(url, "base")
    assert tables(sync_url) == set()
    migrate.upgrade(url)
    assert "resources" in tables(sync_url)


def test_each_revision_steps_down_and_up(empty_db: tuple[str, str]) -> None:
    url, sync_url = empty_db
    migrate.upgrade(url)
    head_tables = tables(sync_url)
    migrate.downgrade(url, "-1")
    migrate.upgrade(url)
    assert tables(sync_url) == head_tables


def test_0008_console_sessions_upgrades_from_0007_and_downgrades_back(empty_db: tuple[str, str]) -> None:
    url, sync_url = empty_db
    migrate.upgrade(url, "0007_retention")
    before = tables(sync_url)
    assert "console_sessions" not in before
    migrate.upgrade(url, "0008_console_sessions")
    assert tables(sync_url) == before | {"console_sessions"}
    engine = create_engine(sync_url)
    try:
        inspector = inspect(engine)
        assert inspector.get_pk_constraint("console_sessions")["constrained_columns"] == ["id_sha256"]
        indexes = {i["name"]: i["column_names"] for i in inspector.get_indexes("console_sessions")}
        assert indexes == {"ix_console_sessions_kind_expires_at": ["kind", "expires_at"]}
    finally:
        engine.dispose()
    migrate.downgrade(url, "0007_retention")
    assert tables(sync_url) == before


def test_there_is_one_head() -> None:
    assert len(migrate.current_heads("sqlite+aiosqlite:///:memory:")) == 1


# Revisions that change only PostgreSQL objects (SQLite has no roles or function security).
POSTGRESQL_ONLY = {"0009_audit_head_definer"}


def test_0009_runs_the_chain_head_trigger_as_its_owner_with_a_fixed_search_path(
    empty_db: tuple[str, str],
) -> None:
    url, sync_url = empty_db
    if not url.startswith("postgresql"):
        migrate.upgrade(url, "0008_console_sessions")
        before = schema(sync_url)
        migrate.upgrade(url, "0009_audit_head_definer")
        assert schema(sync_url) == before
        migrate.downgrade(url, "0008_console_sessions")
        return
    query = text("SELECT prosecdef, proconfig, has_function_privilege('public', p.oid, 'EXECUTE') FROM pg_proc p "
                 "WHERE proname = 'audit_entries_extend_head'")
    engine = create_engine(sync_url)
    try:
        migrate.upgrade(url, "0008_console_sessions")
        with engine.connect() as conn:
            assert tuple(conn.execute(query).one()) == (False, None, True)
        migrate.upgrade(url, "0009_audit_head_definer")
        with engine.connect() as conn:
            assert tuple(conn.execute(query).one()) == (True, ["search_path=public, pg_temp"], False)
        migrate.downgrade(url, "0008_console_sessions")
        with engine.connect() as conn:
            assert tuple(conn.execute(query).one()) == (False, None, True)
    finally:
        engine.dispose()


AUDIT_FUNCTIONS = ("audit_reject_change", "audit_entries_extend_head", "audit_chain_head_forward",
                   "audit_inbox_delete_chained", "audit_checkpoints_extend")


def test_0011_fixes_the_search_path_of_every_audit_trigger_function_and_checks_nonces(
    empty_db: tuple[str, str],
) -> None:
    """Every audit trigger function runs with `search_path = public, pg_temp` and names its tables
    `public.<table>` (a TEMP table cannot stand in for one); only the head function is SECURITY DEFINER. Nonces
    must be 32 lower-case hex digits (a CHECK on PostgreSQL, a BEFORE INSERT trigger on SQLite)."""
    url, sync_url = empty_db
    engine = create_engine(sync_url)
    try:
        if not url.startswith("postgresql"):
            migrate.upgrade(url, "0010_audit_entry_mac")
            before = schema(sync_url)
            migrate.upgrade(url, "0011_audit_fixed_search_path")
            assert schema(sync_url) - before == {"trigger:audit_inbox_nonce_canonical",
                                                 "trigger:audit_entries_nonce_canonical"}
            migrate.downgrade(url, "0010_audit_entry_mac")
            assert schema(sync_url) == before
            return
        query = text("SELECT proname, prosecdef, proconfig, prosrc LIKE '%public.audit_%' FROM pg_proc "
                     "WHERE proname LIKE 'audit_%' ORDER BY proname")
        checks = text("SELECT conname, convalidated FROM pg_constraint WHERE contype = 'c' AND conname LIKE '%nonce%'")
        fixed = ["search_path=public, pg_temp"]
        migrate.upgrade(url, "0010_audit_entry_mac")
        with engine.connect() as conn:
            before = {row[0]: tuple(row[1:]) for row in conn.execute(query)}
        assert before["audit_entries_extend_head"] == (True, fixed, False)
        assert before["audit_inbox_delete_chained"] == (False, None, False)
        migrate.upgrade(url, "0011_audit_fixed_search_path")
        with engine.connect() as conn:
            after = {row[0]: tuple(row[1:]) for row in conn.execute(query)}
            assert set(conn.execute(checks).all()) == {("ck_audit_inbox_nonce_canonical", True),
                                                        ("ck_audit_entries_nonce_canonical", True)}
        reads_tables = set(AUDIT_FUNCTIONS) - {"audit_reject_change"}
        assert after == {name: (name == "audit_entries_extend_head", fixed, name in reads_tables)
                         for name in AUDIT_FUNCTIONS}
        migrate.downgrade(url, "0010_audit_entry_mac")
        with engine.connect() as conn:
            assert {row[0]: tuple(row[1:]) for row in conn.execute(query)} == before
            assert conn.execute(checks).all() == []
    finally:
        engine.dispose()


def test_every_revision_steps_down_and_up_again(empty_db: tuple[str, str]) -> None:
    """Walk the whole history one revision at a time, down to base and back up, checking the schema (tables,
    triggers, functions) at each step: every downgrade removes what its revision made, and only that."""
    url, sync_url = empty_db
    migrate.upgrade(url)
    seen = [schema(sync_url)]
    steps = 0
    while seen[-1]:
        revision = current_revision(sync_url)
        migrate.downgrade(url, "-1")
        steps += 1
        now = schema(sync_url)
        if revision in POSTGRESQL_ONLY and not url.startswith("postgresql"):
            assert now == seen[-1], f"{revision} changes nothing on SQLite"
        else:
            assert now < seen[-1], f"the downgrade of {revision} must remove what it made"
        seen.append(now)
    assert steps >= 11  # 0001..0011, then nothing
    for expected in reversed(seen[:-1]):
        migrate.upgrade(url, "+1")
        assert schema(sync_url) == expected


COMPARE = """
import sys
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from app.models import Base  # what migrations/env.py gives autogenerate, and nothing else
engine = create_engine(sys.argv[1])
with engine.connect() as conn:
    print(repr(compare_metadata(MigrationContext.configure(conn), Base.metadata)))
"""


def test_the_models_and_the_migrations_describe_the_same_schema(empty_db: tuple[str, str]) -> None:
    """What `alembic revision --autogenerate` would write against a migrated database: nothing. Run in a fresh
    interpreter so only app.models' imports count, as in migrations/env.py (a model it forgets would be dropped)."""
    url, sync_url = empty_db
    migrate.upgrade(url)
    out = subprocess.run([sys.executable, "-c", COMPARE, sync_url], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"
