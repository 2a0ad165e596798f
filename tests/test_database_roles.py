"""Least privilege on PostgreSQL (C6, issue 15 finding 4): migrations run as an owner role, the service connects
as a role that owns nothing and cannot switch the audit triggers off, rewrite or cut the trail.

The roles are cluster-global, so their names carry a token of this run (another checkout may run the suite on
the same server); they are dropped after the database that holds their grants.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from app import migrate
from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.jobs import ChainKeeper
from app.audit.runtime import AuditRuntime
from app.audit.service import append_entry, read_chain_head
from app.audit.settings import AuditSettings
from app.cli import cli
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from app.db_privileges import (
    AUDIT_TABLES,
    GRANTABLE,
    SERVICE_GRANTS,
    PrivilegeError,
    RoleFacts,
    RoleState,
    TableFacts,
    assess_role,
    check_connected_role,
    grant_service_privileges,
    inspect_role,
    validate_role_name,
)
from app.models import Base
from tests.fixtures.database import PG_HOST, PG_PORT, PG_USER, drop_pg_database, worker_id
from tests.fixtures.relay import run_relay


@dataclass(frozen=True)
class TwoRoles:
    database: str
    owner: str
    service: str

    def url(self, role: str) -> str:
        return f"postgresql+asyncpg://{role}@{PG_HOST}:{PG_PORT}/{self.database}"

    @property
    def owner_url(self) -> str:
        return self.url(self.owner)

    @property
    def service_url(self) -> str:
        return self.url(self.service)


def _admin(sql: str) -> None:
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres", autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # test-made names of [a-z0-9_] only


@pytest.fixture(scope="module")
def roles(request: pytest.FixtureRequest) -> Iterator[TwoRoles]:
    """A database owned by a fresh owner role, migrated as it, and a service role granted by our code."""
    token = uuid4().hex[:8]
    made = TwoRoles(f"voicelog_roles_{worker_id(request.config)}", f"vl_owner_{token}", f"vl_service_{token}")
    _admin(f"CREATE ROLE {made.owner} LOGIN")
    _admin(f"CREATE ROLE {made.service} LOGIN")
    try:
        _admin(f'DROP DATABASE IF EXISTS "{made.database}" WITH (FORCE)')
        _admin(f'CREATE DATABASE "{made.database}" OWNER {made.owner}')
        migrate.upgrade(made.owner_url)
        migrate.grant_service_role(made.owner_url, made.service)
        yield made
    finally:
        drop_pg_database(made.database)
        _admin(f"DROP ROLE IF EXISTS {made.service}")
        _admin(f"DROP ROLE IF EXISTS {made.owner}")


@pytest.fixture
def audit_runtime(tmp_path: Path) -> AuditRuntime:
    """The audit runtime of tests/fixtures/audit.py, with a checkpoint period spelled out."""
    settings = AuditSettings(signing_key_dir=tmp_path / "audit-keys",
                             checkpoint_export_path=tmp_path / "audit-checkpoints.jsonl", checkpoint_every_minutes=1)
    return AuditRuntime.from_settings(settings, tmp_path)


@pytest.fixture
async def service_engine(roles: TwoRoles) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(roles.service_url)
    yield engine
    await engine.dispose()


async def refused(engine: AsyncEngine, sql: str) -> str:
    """Run `sql` in a transaction that is rolled back; return the database's refusal (fails if it ran)."""
    async with engine.connect() as conn:
        with pytest.raises(DBAPIError) as caught:
            await conn.execute(text(sql))
        await conn.rollback()
    return str(caught.value.orig)


async def append_and_seal(engine: AsyncEngine, runtime: AuditRuntime, clock: ManualClock, count: int) -> None:
    factory = runtime.bind_sessions(create_session_factory(engine))  # appends with the runtime's MAC key
    async with factory() as session:
        for n in range(count):
            await append_entry(session=session, clock=clock, actor=Actor.staff(f"alice{n}"),
                               action=AuditAction.TICKET_CREATED, subjects=Subjects(ticket=f"T-{n}"))
        await session.commit()
    result = await ChainKeeper(runtime, factory, clock).tick(force=True)
    assert result.chained >= count  # and whatever an earlier test left queued
    assert result.checkpoint is not None


# --- the service role cannot cut or rewrite the trail ----------------------------------------------


@pytest.mark.parametrize("table", AUDIT_TABLES)
async def test_the_service_role_cannot_disable_the_audit_triggers(service_engine: AsyncEngine, table: str) -> None:
    assert "must be owner" in await refused(service_engine, f"ALTER TABLE {table} DISABLE TRIGGER USER")
    assert "must be owner" in await refused(service_engine, f"ALTER TABLE {table} DISABLE TRIGGER ALL")


async def test_the_service_role_cannot_turn_triggers_off_for_its_session(service_engine: AsyncEngine) -> None:
    assert "permission denied" in await refused(service_engine, "SET session_replication_role = replica")


@pytest.mark.parametrize("table", ["audit_entries", "audit_checkpoints"])
@pytest.mark.parametrize("statement", ["UPDATE {t} SET head_hash = head_hash", "DELETE FROM {t}", "TRUNCATE {t}"])
async def test_the_service_role_may_not_update_delete_or_truncate_the_trail(
    roles: TwoRoles, service_engine: AsyncEngine, audit_runtime: AuditRuntime, audit_clock: ManualClock,
    table: str, statement: str,
) -> None:
    """Refused by privilege (permission denied), before any trigger is asked."""
    await append_and_seal(service_engine, audit_runtime, audit_clock, 2)
    column = "entry_hash" if table == "audit_entries" else "head_hash"
    sql = statement.format(t=table).replace("head_hash", column)
    assert "permission denied" in await refused(service_engine, sql)


async def test_the_service_role_cannot_move_the_chain_head_itself(service_engine: AsyncEngine) -> None:
    assert "permission denied" in await refused(service_engine, "UPDATE audit_chain_head SET seq = 0")
    assert "permission denied" in await refused(service_engine, "DELETE FROM audit_chain_head")
    assert "permission denied" in await refused(service_engine, "TRUNCATE audit_inbox")


async def test_the_service_role_cannot_delete_an_unchained_inbox_row(
    service_engine: AsyncEngine, audit_clock: ManualClock,
) -> None:
    async with create_session_factory(service_engine)() as session:
        entry = await append_entry(session=session, clock=audit_clock, actor=Actor.staff("mallory"),
                                   action=AuditAction.TICKET_CREATED, subjects=Subjects(ticket="T-x"))
        await session.commit()
    message = await refused(service_engine, f"DELETE FROM audit_inbox WHERE id = {int(entry.inbox_id or 0)}")  # noqa: S608
    assert "not chained yet" in message


async def test_the_service_role_cannot_delete_a_queued_entry_by_shadowing_audit_entries_with_a_temp_table(
    service_engine: AsyncEngine, audit_clock: ManualClock, tmp_path: Path,
) -> None:
    """Review of issue 15: audit_inbox_delete_chained() named `audit_entries` unqualified and ran with the
    caller's search_path, so a TEMP table of that name (search_path = pg_temp, public) answered its EXISTS and
    the service role deleted a genuine entry before the sequencer chained it. Since 0011 every audit trigger
    function has a fixed search_path and schema-qualified tables; the entry is chained and verifies."""
    runtime = AuditRuntime.from_settings(AuditSettings(signing_key_dir=tmp_path / "audit-keys",
                                                       checkpoint_export_path=tmp_path / "audit-checkpoints.jsonl"),
                                         tmp_path)
    factory = runtime.bind_sessions(create_session_factory(service_engine))  # the application's, with the MAC key
    await ChainKeeper(runtime, factory, audit_clock).tick(force=True)  # start from a drained inbox
    async with factory() as session:  # the application (with the MAC key) queues a genuine entry
        entry = await append_entry(session=session, clock=audit_clock, actor=Actor.staff("alice-read"),
                                   action=AuditAction.TICKET_CREATED, subjects=Subjects(ticket="T-alice-read"))
        await session.commit()
    victim = entry.inbox_id
    assert victim is not None
    # A connection of its own: the temp table must not reach the pool. The service role's SQL alone.
    attacker = create_engine(service_engine.url.render_as_string(hide_password=False))
    try:
        async with attacker.connect() as conn:
            await conn.execute(text("SET LOCAL search_path = pg_temp, public"))
            await conn.execute(text("CREATE TEMP TABLE audit_entries (inbox_id bigint) ON COMMIT DROP"))
            await conn.execute(text("INSERT INTO audit_entries VALUES (:id)"), {"id": victim})
            with pytest.raises(DBAPIError, match="not chained yet"):
                await conn.execute(text("DELETE FROM public.audit_inbox WHERE id = :id"), {"id": victim})
            await conn.rollback()
    finally:
        await attacker.dispose()
    await ChainKeeper(runtime, factory, audit_clock).tick(force=True)
    async with factory() as session:  # chained, authentic (the module's database holds other tests' keys' entries)
        chained = (await session.execute(text(
            "SELECT seq, entry_hash, mac FROM audit_entries WHERE inbox_id = :id"), {"id": victim})).all()
    assert len(chained) == 1
    assert runtime.mac_keys is not None
    assert runtime.mac_keys.check_entry_mac(chained[0].mac, chained[0].seq, chained[0].entry_hash)


# --- ... and still does all its work --------------------------------------------------------------


async def test_the_service_role_appends_chains_and_signs_checkpoints(
    service_engine: AsyncEngine, audit_runtime: AuditRuntime, audit_clock: ManualClock,
) -> None:
    factory = create_session_factory(service_engine)
    async with factory() as session:
        before = await read_chain_head(session)
    await append_and_seal(service_engine, audit_runtime, audit_clock, 3)
    async with factory() as session:
        # chain_now: the inline path takes the chain lock (SELECT ... FOR UPDATE on the head) itself.
        entry = await append_entry(session=session, clock=audit_clock, actor=Actor.staff("bob"),
                                   action=AuditAction.TICKET_CREATED, subjects=Subjects(ticket="T-inline"),
                                   chain_now=True)
        await session.commit()
        head = await read_chain_head(session)
        inbox = (await session.execute(text("SELECT count(*) FROM audit_inbox"))).scalar_one()
    assert entry.seq == head.seq
    assert head.seq >= before.seq + 5  # three entries, the checkpoint's own entry, the inline one
    assert inbox == 0  # the sequencer deleted what it chained


async def test_the_service_role_reads_and_writes_ordinary_tables(service_engine: AsyncEngine) -> None:
    async with service_engine.connect() as conn:
        await conn.execute(text("INSERT INTO teams (id, name, created_at) VALUES ('roles-test', 'Roles', now())"))
        await conn.execute(text("UPDATE teams SET name = 'Roles 2' WHERE id = 'roles-test'"))
        await conn.execute(text("DELETE FROM teams WHERE id = 'roles-test'"))
        assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
        await conn.rollback()
    assert "permission denied" in await refused(service_engine, "UPDATE alembic_version SET version_num = 'x'")
    assert "permission denied" in await refused(service_engine, "TRUNCATE teams")
    assert "permission denied" in await refused(service_engine, "CREATE TABLE sneaky (id int)")


# --- the grants: exact, idempotent, refused when unsafe -----------------------------------------------


async def test_the_grants_are_exactly_the_declared_ones_and_idempotent(roles: TwoRoles) -> None:
    """The fixture granted once; granting again changes nothing."""
    engine = create_engine(roles.owner_url)
    try:
        async with engine.begin() as conn:
            await grant_service_privileges(conn, roles.service)
        async with engine.connect() as conn:
            facts = await inspect_role(conn, roles.service)
    finally:
        await engine.dispose()
    held = {t.table: t.privileges for t in facts.tables}
    assert held == {table: grant.expected() for table, grant in SERVICE_GRANTS.items()}
    assert not facts.superuser
    assert not facts.can_set_replication_role
    assert not [t for t in facts.tables if t.owned or t.member_of_owner]


async def test_granting_refuses_a_table_without_a_decision(roles: TwoRoles) -> None:
    engine = create_engine(roles.owner_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("CREATE TABLE undecided (id int)"))
            with pytest.raises(PrivilegeError, match="undecided"):
                await grant_service_privileges(conn, roles.service)
            await conn.rollback()
    finally:
        await engine.dispose()


async def test_granting_refuses_the_owner_or_a_superuser_as_service_role(roles: TwoRoles) -> None:
    engine = create_engine(roles.owner_url)
    try:
        async with engine.connect() as conn:
            with pytest.raises(PrivilegeError, match="owns tables"):
                await grant_service_privileges(conn, roles.owner)
            with pytest.raises(PrivilegeError, match="superuser"):
                await grant_service_privileges(conn, "postgres")
            with pytest.raises(PrivilegeError, match="does not exist"):
                await grant_service_privileges(conn, f"{roles.service}_missing")
            await conn.rollback()
    finally:
        await engine.dispose()


@pytest.mark.parametrize("name", ['app"; DROP TABLE audit_entries; --', "App", "pg_monitor", "", "a" * 64,
                                  "voicelog app", "app\n"])
def test_role_names_are_validated_before_they_reach_sql(name: str) -> None:
    with pytest.raises(PrivilegeError, match="invalid service role name"):
        validate_role_name(name)


def test_every_table_of_the_models_has_an_explicit_privilege_decision() -> None:
    """A new table fails here until someone decides what the service role may do with it."""
    assert set(SERVICE_GRANTS) == set(Base.metadata.tables) | {"alembic_version"}
    for table, grant in SERVICE_GRANTS.items():
        assert grant.privileges <= GRANTABLE, table
        assert set(grant.columns) <= GRANTABLE, table
    for table in AUDIT_TABLES:  # append and read; the two exceptions are justified in SERVICE_GRANTS
        assert SERVICE_GRANTS[table].privileges <= {"SELECT", "INSERT", "DELETE"}
    assert "DELETE" not in SERVICE_GRANTS["audit_entries"].privileges | SERVICE_GRANTS["audit_checkpoints"].privileges
    assert SERVICE_GRANTS["audit_chain_head"].expected() == {"SELECT", "UPDATE(id)"}


# --- the start-up check ------------------------------------------------------------------------------


async def test_the_start_up_check_names_the_owner_the_superuser_and_passes_the_service_role(
    roles: TwoRoles,
) -> None:
    for url, expected in ((roles.owner_url, RoleState.OWNER), (roles.service_url, RoleState.OK),
                          (roles.url(PG_USER), RoleState.SUPERUSER)):
        engine = create_engine(url)
        try:
            assert (await check_connected_role(engine)).state is expected, url
        finally:
            await engine.dispose()


def _in_database(roles: TwoRoles, sql: str) -> None:
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={roles.database}",
                         autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # test-made names of [a-z0-9_] only


async def test_the_role_check_reports_create_on_the_schema_through_public_and_granting_revokes_it(
    roles: TwoRoles, service_engine: AsyncEngine,
) -> None:
    """Review of issue 15: a database made before PostgreSQL 15 (or restored from one) grants CREATE on schema
    public to PUBLIC. The role check called that ok, and granting revoked CREATE from the role itself only."""
    _in_database(roles, "GRANT CREATE ON SCHEMA public TO PUBLIC")
    try:
        assessment = await check_connected_role(service_engine)
        assert assessment.state is RoleState.EXCESS
        assert any("CREATE in schema public" in reason for reason in assessment.reasons)
        summary = await asyncio.to_thread(migrate.grant_service_role, roles.owner_url, roles.service)  # as deployed
        assert summary.public_create_revoked
        assert not summary.can_create_in_schema
        assert "permission denied" in await refused(service_engine, "CREATE TABLE public.sneaky_rv (id int)")
        assert (await check_connected_role(service_engine)).state is RoleState.OK
    finally:
        _in_database(roles, "REVOKE CREATE ON SCHEMA public FROM PUBLIC")


async def test_granting_revokes_temporary_from_the_service_role_and_reports_temp_through_public(
    roles: TwoRoles, service_engine: AsyncEngine,
) -> None:
    """TEMP is reported, not refused: PUBLIC holds it by default (the database owner's decision), and since
    0011 a TEMP table shadows nothing the audit triggers read."""
    _in_database(roles, f'GRANT TEMPORARY ON DATABASE "{roles.database}" TO {roles.service}')
    _in_database(roles, f'REVOKE TEMPORARY ON DATABASE "{roles.database}" FROM PUBLIC')
    try:
        summary = await asyncio.to_thread(migrate.grant_service_role, roles.owner_url, roles.service)
        assert not summary.has_temp  # the direct grant is gone, and PUBLIC has none here
        assert "permission denied" in await refused(service_engine, "CREATE TEMP TABLE t_rv (id int)")
        facts_state = await check_connected_role(service_engine)
        assert (facts_state.state, facts_state.notes) == (RoleState.OK, ())
    finally:
        _in_database(roles, f'GRANT TEMPORARY ON DATABASE "{roles.database}" TO PUBLIC')
    summary = await asyncio.to_thread(migrate.grant_service_role, roles.owner_url, roles.service)
    assert summary.has_temp  # through PUBLIC: said, not revoked
    assert any("TEMP" in note for note in summary.notes())
    assessment = await check_connected_role(service_engine)
    assert assessment.state is RoleState.OK
    assert any("TEMP" in note for note in assessment.notes)


async def test_a_member_of_the_owner_role_is_reported(roles: TwoRoles) -> None:
    member = f"{roles.service}_m"
    _admin(f"CREATE ROLE {member} LOGIN IN ROLE {roles.owner}")
    try:
        engine = create_engine(roles.url(member))
        try:
            assessment = await check_connected_role(engine)
        finally:
            await engine.dispose()
        assert assessment.state is RoleState.MEMBER_OF_OWNER
        assert any(roles.owner in reason for reason in assessment.reasons)
    finally:
        _admin(f"DROP ROLE {member}")


def test_the_assessment_puts_the_worst_finding_first() -> None:
    entries = TableFacts(table="audit_entries", owner="o", owned=False, member_of_owner=False,
                         privileges=frozenset({"SELECT", "INSERT", "TRUNCATE"}))
    assert assess_role(RoleFacts("app", False, False, (entries,))).state is RoleState.EXCESS
    assert assess_role(RoleFacts("app", False, True, (entries,))).state is RoleState.TRIGGERS_OFF
    assert assess_role(RoleFacts("app", True, True, (entries,))).state is RoleState.SUPERUSER
    clean = TableFacts(table="audit_entries", owner="o", owned=False, member_of_owner=False,
                       privileges=frozenset({"SELECT", "INSERT"}))
    assert assess_role(RoleFacts("app", False, False, (clean,))).state is RoleState.OK
    assert assess_role(RoleFacts("app", False, False, (clean,), schema_create=True)).state is RoleState.EXCESS
    temp = assess_role(RoleFacts("app", False, False, (clean,), database_temp=True))
    assert temp.state is RoleState.OK
    assert temp.notes


async def readyz_role(base: str) -> str:
    async with httpx.AsyncClient(base_url=base) as client:
        for _ in range(100):
            response = await client.get("/readyz")
            state = str(response.json()["checks"]["database_role"])
            if state != RoleState.CHECKING.value:
                return state
            await asyncio.sleep(0.05)
    raise AssertionError("the start-up role check never finished")


async def test_readyz_reports_the_owner_role_without_gating_and_not_applicable_on_sqlite(
    roles: TwoRoles, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    from tests.fixtures.relay import relay_settings

    async with run_relay(relay_settings(tmp_path / "pg", roles.owner_url)) as relay:
        assert await readyz_role(relay.http) == "owner"
    assert [r for r in caplog.records if "database.role.unsafe" in r.getMessage() and r.levelname == "WARNING"]
    async with run_relay(relay_settings(tmp_path / "svc", roles.service_url)) as relay:
        assert await readyz_role(relay.http) == "ok"
    sqlite = tmp_path / "app.db"
    await asyncio.to_thread(migrate.upgrade, f"sqlite+aiosqlite:///{sqlite}")
    async with run_relay(relay_settings(tmp_path / "lite", f"sqlite+aiosqlite:///{sqlite}")) as relay:
        assert await readyz_role(relay.http) == "not_applicable"


# --- the CLI -------------------------------------------------------------------------------------


def test_db_upgrade_grants_the_service_role_and_check_privileges_reports_it(
    roles: TwoRoles, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    runner = CliRunner()
    monkeypatch.setenv("VOICELOG_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("VOICELOG_DATABASE_URL", roles.owner_url)
    monkeypatch.setenv("VOICELOG_DATABASE_SERVICE_ROLE", roles.service)
    upgraded = runner.invoke(cli, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert f"granted {roles.service}" in upgraded.output
    bad = runner.invoke(cli, ["db", "upgrade", "--service-role", 'x"; drop'])
    assert bad.exit_code == 2
    as_owner = runner.invoke(cli, ["db", "check-privileges", "--json"])
    assert as_owner.exit_code == 1
    assert json.loads(as_owner.output)["state"] == "owner"
    exact = runner.invoke(cli, ["db", "check-privileges", "--role", roles.service, "--json"])
    assert exact.exit_code == 0, exact.output
    report = json.loads(exact.output)
    assert (report["state"], report["differences"], report["undeclared"]) == ("ok", {}, [])
    assert report["schema_create"] is False
    assert isinstance(report["database_temp"], bool)
    monkeypatch.setenv("VOICELOG_DATABASE_URL", roles.service_url)
    as_service = runner.invoke(cli, ["db", "check-privileges"])
    assert as_service.exit_code == 0, as_service.output
    assert f"role {roles.service}: ok" in as_service.output
    assert "schema public\t-" in as_service.output
    assert "database\t" in as_service.output
