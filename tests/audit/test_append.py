"""Appending: one entry per change, in the change's transaction, chained without forks or gaps (C6)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import exc, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, AuditAction, InvalidAuditEntry, Subjects
from app.audit.canonical import GENESIS_HASH
from app.audit.keys import PublicKeySet
from app.audit.service import ENTRIES, INBOX, append_entry, integrate_pending, read_chain_head
from app.audit.verifier import verify_chain
from app.clock import ManualClock
from tests.audit.scenario import append_and_chain, append_step, example_steps
from tests.audit.tamper import hash_of
from tests.fixtures.audit import AuditDb

NO_KEYS = PublicKeySet.of([])


async def test_entries_extend_the_chain_one_by_one_with_linked_hashes(
    audit_session: AsyncSession, audit_clock: ManualClock
) -> None:
    before = await read_chain_head(audit_session)
    steps = example_steps(1, audit_clock.now())
    await append_and_chain(audit_session, audit_clock, steps)

    rows = (await audit_session.execute(select(ENTRIES).where(ENTRIES.c.seq > before.seq).order_by(ENTRIES.c.seq))
            ).mappings().all()
    assert [r["seq"] for r in rows] == list(range(before.seq + 1, before.seq + len(steps) + 1))
    assert [r["action"] for r in rows] == [s.action.value for s in steps]
    prev = before.entry_hash
    for row in rows:
        assert row["prev_hash"] == prev
        assert row["entry_hash"] == hash_of(dict(row))
        prev = row["entry_hash"]
    head = await read_chain_head(audit_session)
    assert (head.seq, head.entry_hash) == (rows[-1]["seq"], rows[-1]["entry_hash"])


async def test_an_entry_commits_and_rolls_back_with_the_change_it_records(
    audit_db: AuditDb, audit_clock: ManualClock
) -> None:
    step = example_steps(1, audit_clock.now())[0]
    async with audit_db.factory() as session:
        await append_step(session, audit_clock, step)
        await session.rollback()
    async with audit_db.factory() as session:
        await append_step(session, audit_clock, step)
        await session.commit()
    async with audit_db.factory() as session:
        await integrate_pending(session, wait=True)
        await session.commit()
        entries = (await session.execute(select(ENTRIES.c.seq, ENTRIES.c.prev_hash))).all()
        pending = (await session.execute(select(func.count()).select_from(INBOX))).scalar_one()
    assert entries == [(1, GENESIS_HASH)]
    assert pending == 0


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)  # SQLite chains at once (tested above)
async def test_postgres_queues_entries_and_the_sequencer_chains_them(
    audit_db: AuditDb, audit_clock: ManualClock
) -> None:
    async with audit_db.factory() as session:
        queued = [await append_step(session, audit_clock, s) for s in example_steps(3, audit_clock.now())]
        await session.commit()
    assert all(e.seq is None and e.inbox_id is not None for e in queued)
    async with audit_db.factory() as session:
        assert await integrate_pending(session, limit=3) == 3
        assert await integrate_pending(session, limit=100) == len(queued) - 3
        await session.commit()
    async with audit_db.factory() as session:
        result = await verify_chain(session=session, keys=NO_KEYS, now=audit_clock.now())
    assert result.ok
    assert result.head_seq == len(queued)


async def test_sqlite_chains_at_once_and_postgres_can_on_request(
    audit_session: AsyncSession, audit_clock: ManualClock, db_kind: str
) -> None:
    step = example_steps(2, audit_clock.now())[3]
    entry = await append_entry(session=audit_session, clock=audit_clock, actor=step.actor, action=step.action,
                               subjects=step.subjects, detail=step.detail,
                               chain_now=True if db_kind == "postgresql" else None)
    head = await read_chain_head(audit_session)
    assert entry.chained
    assert (entry.seq, entry.entry_hash) == (head.seq, head.entry_hash)
    assert entry.detail["request_ids"] == ["req-2"]


async def test_a_detail_outside_its_schema_is_refused_and_nothing_is_written(
    audit_session: AsyncSession, audit_clock: ManualClock
) -> None:
    await integrate_pending(audit_session, wait=True)
    before = await read_chain_head(audit_session)
    bad_details = [
        {"setting": "x", "change": "set", "transcript": "hello caller"},  # a key the schema does not have
        {"setting": "x"},  # a required key missing
        {"setting": "x", "change": "y" * 65},  # too long to be a code
        {"setting": "x", "change": 1.5},  # floats are not canonical
    ]
    for detail in bad_details:
        with pytest.raises(InvalidAuditEntry):
            await append_entry(session=audit_session, clock=audit_clock, actor=Actor.staff("carol"),
                               action=AuditAction.ADMIN_CHANGED, detail=detail)
    with pytest.raises(InvalidAuditEntry, match="missing subjects"):
        await append_entry(session=audit_session, clock=audit_clock, actor=Actor.staff("alice"),
                           action=AuditAction.RECORDING_READ, subjects=Subjects(request_id="r1"),
                           detail={"bytes": 1, "part": "timeline"})
    await integrate_pending(audit_session, wait=True)
    assert await read_chain_head(audit_session) == before


async def test_none_for_an_optional_field_is_left_out(audit_session: AsyncSession, audit_clock: ManualClock) -> None:
    entry = await append_entry(session=audit_session, clock=audit_clock, actor=Actor.service("ticketing"),
                               action=AuditAction.TICKET_CREATED, subjects=Subjects(ticket="t-1"),
                               detail={"external_ref": None})
    assert entry.detail_json == "{}"


async def test_the_database_refuses_an_entry_that_forks_or_skips(
    audit_session: AsyncSession, audit_clock: ManualClock
) -> None:
    await append_and_chain(audit_session, audit_clock, example_steps(4, audit_clock.now())[:2])
    head = await read_chain_head(audit_session)
    last = (await audit_session.execute(select(ENTRIES).where(ENTRIES.c.seq == head.seq))).mappings().one()
    fork = dict(last, seq=head.seq + 1, prev_hash=last["prev_hash"], actor_id="mallory", inbox_id=None)
    gap = dict(last, seq=head.seq + 2, prev_hash=head.entry_hash, actor_id="mallory", inbox_id=None)
    for row in (fork, gap):
        row["entry_hash"] = hash_of(row)
        savepoint = await audit_session.begin_nested()
        with pytest.raises(exc.DBAPIError, match="extend the chain head"):
            await audit_session.execute(insert(ENTRIES).values(row))
        await savepoint.rollback()
    assert await read_chain_head(audit_session) == head


async def test_a_long_run_verifies_and_can_be_verified_from_the_middle(
    audit_db: AuditDb, audit_clock: ManualClock
) -> None:
    async with audit_db.factory() as session:
        for n in range(30):
            await append_and_chain(session, audit_clock, example_steps(n, audit_clock.now()),
                                   advance=lambda _i: timedelta(minutes=7))
        await session.commit()
    async with audit_db.factory() as session:
        full = await verify_chain(session=session, keys=NO_KEYS, now=audit_clock.now(), batch=17)
        tail = await verify_chain(session=session, keys=NO_KEYS, now=audit_clock.now(), from_seq=200, batch=17)
    assert (full.ok, full.entries_checked, full.head_seq) == (True, 240, 240)
    assert (tail.ok, tail.entries_checked, tail.head_seq) == (True, 41, 240)


async def test_detail_is_stored_as_canonical_json(audit_session: AsyncSession, audit_clock: ManualClock) -> None:
    entry = await append_entry(session=audit_session, clock=audit_clock, actor=Actor.staff("alice"),
                               action=AuditAction.ACCESS_REQUESTED, subjects=Subjects(grant="g", ticket="t"),
                               detail={"request_ids": ["b", "a"], "justification": "écoute", "duration_s": 60})
    assert entry.detail_json == '{"duration_s":60,"justification":"\\u00e9coute","request_ids":["b","a"]}'
    assert json.loads(entry.detail_json)["justification"] == "écoute"


async def test_queued_entries_never_reuse_an_inbox_id(audit_db: AuditDb, audit_clock: ManualClock) -> None:
    """A reused id would let an old chained entry vouch for deleting a new, unchained one."""
    step = example_steps(1, audit_clock.now())[0]
    ids = []
    for _ in range(3):
        async with audit_db.factory() as session:
            entry = await append_entry(session=session, clock=audit_clock, actor=step.actor, action=step.action,
                                       subjects=step.subjects, detail=step.detail, chain_now=False)
            ids.append(entry.inbox_id)
            await integrate_pending(session, wait=True)  # empties the inbox each time
            await session.commit()
    assert ids == sorted(set(ids))
    async with audit_db.factory() as session:
        assert (await verify_chain(session=session, keys=NO_KEYS, now=audit_clock.now())).head_seq == 3
