"""The audit trail against the two real database roles (C6, issue 15 finding 4 and its Tests section).

tests/audit/test_anchoring.py and test_entry_mac.py tamper as the test superuser (`session_replication_role`);
here the attacker is exactly what a deployment has: the run-unique owner role of tests/test_database_roles.py
(owns every table, is no superuser, so it switches the triggers off with `ALTER TABLE ... DISABLE TRIGGER USER`)
and the service role (owns nothing). The application appends, chains, signs and anchors through the service
role, with the entry MAC keys; the verifier runs as the service role with the anchored checkpoints and the keys,
as `GET /audit/verify` and the scheduled job do. Each test gets its own clone of the roles' migrated database
(ownership and grants come with the clone).
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.audit.canonical import canonical_time, encode_entry
from app.audit.checkpoints import Checkpoint, list_checkpoints
from app.audit.entry_mac import EntryMacKeys, encode_content
from app.audit.jobs import ChainKeeper, run_verification
from app.audit.runtime import AuditRuntime
from app.audit.service import ENTRIES, INBOX, integrate_pending, prepare_detail, read_chain_head
from app.audit.settings import AuditSettings
from app.audit.verifier import DamageKind, VerificationResult
from app.clock import ManualClock
from app.db import create_engine, create_session_factory
from tests.audit import tamper
from tests.audit.scenario import append_step, example_steps
from tests.fixtures.database import PG_HOST, PG_PORT, PG_USER, drop_pg_database, worker_id
from tests.test_database_roles import TwoRoles, refused, roles

__all__ = ["roles"]  # the module fixture of tests/test_database_roles.py, reused (its own instance here)

TRIGGERED = ("audit_entries", "audit_inbox", "audit_chain_head", "audit_checkpoints")
_clones = itertools.count(1)


@dataclass
class Trail:
    """One cloned database: the service's engine (what the application uses) and the owner's (the attacker's)."""

    service: AsyncEngine
    owner: AsyncEngine
    runtime: AuditRuntime
    clock: ManualClock
    service_url: str

    @property
    def factory(self) -> async_sessionmaker[AsyncSession]:
        return self.runtime.bind_sessions(create_session_factory(self.service))  # as build_context binds it

    def keeper(self) -> ChainKeeper:
        return ChainKeeper(self.runtime, self.factory, self.clock)

    async def append(self, n: int, *, gap: timedelta = timedelta(0)) -> None:
        """The application appends the 8 example entries (queued on PostgreSQL), `gap` apart."""
        async with self.factory() as session:
            for step in example_steps(n, self.clock.now()):
                await append_step(session, self.clock, step)
                self.clock.advance(gap)
            await session.commit()

    async def anchor(self) -> Checkpoint:
        """Chain what is queued, sign a checkpoint and anchor it in the sink (the keeper's round)."""
        checkpoint = (await self.keeper().tick(force=True)).checkpoint
        assert checkpoint is not None
        assert (await self.runtime.sink.read_all())[-1] == checkpoint
        return checkpoint

    async def chain_unanchored(self) -> None:
        """Chain what is queued without signing: entries past the newest anchored checkpoint."""
        async with self.factory() as session:
            await integrate_pending(session, wait=True, limit=10_000)
            await session.commit()

    async def head_seq(self) -> int:
        async with self.factory() as session:
            return (await read_chain_head(session)).seq

    async def verify(self) -> VerificationResult:
        return await run_verification(session_factory=self.factory, runtime=self.runtime, clock=self.clock)

    async def as_owner(self, act: Callable[[AsyncSession], Awaitable[None]]) -> None:
        """The issue's attack, as the owner role: switch the audit triggers off, act, switch them on again."""
        async with create_session_factory(self.owner)() as session:
            for table in TRIGGERED:
                await session.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
            await act(session)
            for table in TRIGGERED:
                await session.execute(text(f"ALTER TABLE {table} ENABLE TRIGGER USER"))
            await session.commit()
        async with self.owner.connect() as conn:  # nothing left behind that shows: every trigger is on again
            disabled = (await conn.execute(text(
                "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'D' "
                "AND tgrelid::regclass::text = ANY(:tables)"), {"tables": list(TRIGGERED)})).scalar_one()
        assert disabled == 0


def _admin(sql: str) -> None:
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname=postgres", autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]  # test-made names of [a-z0-9_] only


@pytest.fixture
def clone(roles: TwoRoles, request: pytest.FixtureRequest) -> Iterator[str]:
    """A private copy of the roles' migrated database: the owner role owns its tables, the service role has
    exactly its grants."""
    name = f"voicelog_roles_tamper_{worker_id(request.config)}_{next(_clones)}"
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _admin(f'CREATE DATABASE "{name}" TEMPLATE "{roles.database}" OWNER {roles.owner}')
    try:
        yield name
    finally:
        drop_pg_database(name)


@pytest.fixture
async def trail(roles: TwoRoles, clone: str, audit_clock: ManualClock, tmp_path: Path) -> AsyncIterator[Trail]:
    def url(role: str) -> str:
        return f"postgresql+asyncpg://{role}@{PG_HOST}:{PG_PORT}/{clone}"

    service = create_engine(url(roles.service), pool_size=2, max_overflow=2)
    owner = create_engine(url(roles.owner), pool_size=1, max_overflow=1)
    runtime = AuditRuntime.from_settings(
        AuditSettings(signing_key_dir=tmp_path / "audit-keys", checkpoint_export_path=tmp_path / "anchor.jsonl"),
        tmp_path)  # the service appends with the entry MAC key (Trail.factory), as create_app wires it
    try:
        yield Trail(service, owner, runtime, audit_clock, url(roles.service))
    finally:
        await service.dispose()
        await owner.dispose()


async def _intact(trail: Trail) -> VerificationResult:
    result = await trail.verify()
    assert result.ok, result.damage
    assert (result.macs, result.forged_entries) == ("checked", 0)
    return result


# --- the roles are what they say --------------------------------------------------------------------------


async def test_the_owner_is_no_superuser_and_disables_triggers_only_by_owning_the_tables(trail: Trail) -> None:
    """What the owner does below it does as owner: no superuser bit, no session_replication_role."""
    async with trail.owner.connect() as conn:
        superuser = (await conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"))).scalar()
    assert superuser is False
    assert "permission denied" in await refused(trail.owner, "SET session_replication_role = replica")
    async with trail.owner.connect() as conn:
        await conn.execute(text("ALTER TABLE audit_entries DISABLE TRIGGER USER"))
        await conn.rollback()


@pytest.mark.parametrize("sql", [
    "UPDATE audit_inbox SET actor_id = actor_id",
    "TRUNCATE audit_chain_head",
    "TRUNCATE audit_checkpoints, audit_entries",
    "DELETE FROM audit_checkpoints WHERE number > 0",
    "UPDATE audit_chain_head SET seq = seq - 1, entry_hash = entry_hash",
])
async def test_the_service_role_may_not_change_the_inbox_head_or_checkpoints(trail: Trail, sql: str) -> None:
    """Beyond tests/test_database_roles.py (entries and checkpoints UPDATE/DELETE/TRUNCATE, the head row,
    TRUNCATE of the inbox): refused by privilege, before any trigger is asked."""
    await trail.append(0)
    await trail.anchor()
    assert "permission denied" in await refused(trail.service, sql)


@pytest.mark.parametrize("sql", [
    "DROP TRIGGER audit_entries_append_only ON audit_entries",
    "ALTER TABLE audit_entries DISABLE TRIGGER audit_entries_append_only",
    "ALTER TABLE audit_entries RENAME TO audit_entries_old",
    "ALTER TABLE audit_entries DROP CONSTRAINT ck_audit_entries_nonce_canonical",
    "DROP TABLE audit_checkpoints",
    "CREATE OR REPLACE FUNCTION audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN OLD; "
    "END $$",
    "ALTER FUNCTION audit_entries_extend_head() SECURITY INVOKER",
])
async def test_the_service_role_cannot_drop_replace_or_rename_what_guards_the_trail(trail: Trail, sql: str) -> None:
    """The other ways around a trigger (drop it, disable one by name, replace its function, move the table
    away) all need ownership (or CREATE on the schema, which the service role does not hold either)."""
    message = await refused(trail.service, sql)
    assert "must be owner" in message or "permission denied for schema" in message


async def test_the_service_role_cannot_rewind_the_head_through_its_column_privilege(trail: Trail) -> None:
    """It holds UPDATE on the head's `id` only (for the chain lock); the forward trigger refuses moving it."""
    await trail.append(0)
    await trail.anchor()
    assert "only moves forward" in await refused(trail.service, "UPDATE audit_chain_head SET id = 2")


# --- the owner role cuts or rewrites the tail; the verifier names it ------------------------------------------


@pytest.mark.parametrize("keep_after_anchor", [0, 3])
async def test_an_owner_cut_past_an_anchored_checkpoint_is_reported_tail_truncated(
    trail: Trail, keep_after_anchor: int
) -> None:
    """The issue's attack, as the owner role: triggers off, entries after the last checkpoint but one deleted,
    the head reset, the covering checkpoint deleted from the database, triggers on. The database alone looks
    intact; the checkpoint anchored outside it names the lost head."""
    await trail.append(0)
    first = await trail.anchor()
    await trail.append(1, gap=timedelta(seconds=1))
    second = await trail.anchor()
    await _intact(trail)

    keep = first.head_seq + keep_after_anchor
    assert keep < second.head_seq

    async def cut(session: AsyncSession) -> None:
        await tamper.truncate(session, keep, rewind_head=True, drop_checkpoints=True)

    await trail.as_owner(cut)
    async with trail.factory() as session:  # the database alone: a consistent, shorter chain
        assert (await read_chain_head(session)).seq == keep
        assert [c.number for c in await list_checkpoints(session)] == [first.number]

    result = await trail.verify()
    assert not result.ok
    assert result.damage is not None
    assert (result.damage.kind, result.damage.seq) == (DamageKind.TAIL_TRUNCATED, keep + 1)


async def test_an_owner_cut_past_an_anchored_checkpoint_is_still_found_after_the_service_writes_on(
    trail: Trail,
) -> None:
    """The attacker cuts and lets the application go on: new entries take the cut positions and the keeper signs
    over them. The anchored checkpoint still pins another entry at its seq."""
    await trail.append(0)
    first = await trail.anchor()
    await trail.append(1, gap=timedelta(seconds=1))
    second = await trail.anchor()
    keep = first.head_seq + 2

    async def cut(session: AsyncSession) -> None:
        await tamper.truncate(session, keep, rewind_head=True, drop_checkpoints=True)

    await trail.as_owner(cut)
    trail.clock.advance(timedelta(seconds=10))
    await trail.append(2, gap=timedelta(seconds=1))
    await trail.append(3, gap=timedelta(seconds=1))
    async with trail.factory() as session:
        await integrate_pending(session, wait=True)
        await session.commit()
    assert await trail.head_seq() > second.head_seq  # the cut positions are taken again

    result = await trail.verify()
    assert result.damage is not None
    # Named from the last pin that still holds (checkpoint 1) to the one that does not (checkpoint 2).
    assert (result.damage.kind, result.damage.seq, result.damage.checkpoint) == (
        DamageKind.EDITED, first.head_seq + 1, second.number)
    assert first.head_seq < keep + 1 <= second.head_seq


async def test_an_owner_rewrite_of_the_unanchored_tail_with_recomputed_hashes_is_reported_forged(
    trail: Trail,
) -> None:
    """Past the newest anchored checkpoint the owner edits an entry and recomputes every hash after it and the
    head: chain, links and head agree again, but no rewritten entry carries a valid MAC (the key is not in the
    database)."""
    await trail.append(0)
    anchored = await trail.anchor()
    await trail.append(1, gap=timedelta(seconds=1))
    await trail.chain_unanchored()
    head = await trail.head_seq()
    assert head > anchored.head_seq + 3
    await _intact(trail)
    edited = anchored.head_seq + 2

    async def rewrite(session: AsyncSession) -> None:
        await tamper.rewrite(session, edited)

    await trail.as_owner(rewrite)

    result = await trail.verify()
    assert result.damage is not None
    assert (result.damage.kind, result.damage.seq) == (DamageKind.FORGED, edited)
    assert result.forged_entries == head - edited + 1
    assert result.anchored_through == anchored.head_seq


async def test_an_owner_cut_within_the_unanchored_tail_shows_as_unanchored_seconds(trail: Trail) -> None:
    """The documented limit (docs/AUDIT.md, the owner's row): a cut inside the unanchored tail leaves a
    consistent, shorter chain no anchored checkpoint contradicts. What the verifier owes then is the size of
    that window: the entries and seconds no anchored checkpoint covers, so the cut can be no older than that."""
    await trail.append(0)
    anchored = await trail.anchor()
    trail.clock.advance(timedelta(seconds=1))
    oldest = trail.clock.now()
    await trail.append(1, gap=timedelta(seconds=1))  # 8 entries, 1 s apart
    await trail.chain_unanchored()
    head = await trail.head_seq()
    assert head == anchored.head_seq + 8
    keep = head - 3

    async def cut(session: AsyncSession) -> None:
        await tamper.truncate(session, keep, rewind_head=True)

    await trail.as_owner(cut)
    trail.clock.advance(timedelta(seconds=30))

    result = await trail.verify()
    assert (result.head_seq, result.anchored_through) == (keep, anchored.head_seq)
    assert result.unanchored_entries == keep - anchored.head_seq == 5
    assert result.unanchored_s == (trail.clock.now() - oldest).total_seconds() == 38
    assert result.damage is None or result.damage.seq > anchored.head_seq  # nothing anchored is touched


# --- a forged INSERT through the service role's engine is found -------------------------------------------


def _forged_values(trail: Trail) -> dict[str, object]:
    step = example_steps(99, trail.clock.now())[4]  # an access.approved nobody made
    return {
        "recorded_at": trail.clock.now(), "actor_type": step.actor.type.value, "actor_id": "mallory",
        "action": step.action.value, "ticket_id": step.subjects.ticket, "request_id": step.subjects.request_id,
        "grant_id": step.subjects.grant, "saw_id": step.subjects.saw, "resource_id": step.subjects.resource,
        "detail": prepare_detail(step.action, step.actor, step.subjects, step.detail),
    }


@pytest.mark.parametrize("route", ["entry", "inbox"])
async def test_a_forged_insert_with_the_service_roles_sql_is_reported_forged(trail: Trail, route: str) -> None:
    """With the triggers on, the service role's SQL alone (its own engine, no MAC key) inserts a well-formed
    entry extending the head, or queues a row the sequencer chains; genuine entries and an anchored checkpoint
    follow it. The verifier names it forged at its seq."""
    await trail.append(0)
    await trail.anchor()
    attacker = create_engine(trail.service_url, pool_size=1, max_overflow=0)
    try:
        async with create_session_factory(attacker)() as session:
            values = _forged_values(trail)
            if route == "entry":
                head = await read_chain_head(session)
                seq = head.seq + 1
                digest = hashlib.sha256(encode_entry(seq, *values.values(), head.entry_hash)).hexdigest()
                await session.execute(insert(ENTRIES).values(**values, seq=seq, prev_hash=head.entry_hash,
                                                             entry_hash=digest, mac=None))
            else:  # a nonce in the one spelling, a writer MAC under a key the service does not hold
                nonce = os.urandom(16)
                content = encode_content(canonical_time(trail.clock.now()), *list(values.values())[1:])
                await session.execute(insert(INBOX).values(
                    **values, nonce=nonce.hex(), writer_mac=EntryMacKeys.of(os.urandom(32)).inbox_mac(content, nonce)))
            await session.commit()
    finally:
        await attacker.dispose()
    trail.clock.advance(timedelta(seconds=10))
    await trail.append(1)
    await trail.anchor()
    async with trail.factory() as session:
        forged = (await session.execute(select(ENTRIES.c.seq).where(ENTRIES.c.actor_id == "mallory"))).scalar_one()
        assert (await session.execute(select(func.count()).select_from(INBOX))).scalar_one() == 0

    result = await trail.verify()
    assert result.damage is not None
    assert (result.damage.kind, result.damage.seq) == (DamageKind.FORGED, forged)
    assert result.forged_entries == 1
    assert result.anchored_through > forged  # sealed and anchored, still not authentic
