"""The database itself refuses to change the past: UPDATE, DELETE (and TRUNCATE) fail on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, exc, insert, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.checkpoints import CHECKPOINTS, CheckpointPolicy, seal
from app.audit.keys import FileKeyring
from app.audit.service import ENTRIES, HEAD, INBOX, read_chain_head
from app.clock import ManualClock
from tests.audit.scenario import append_and_chain, example_steps


async def _refused(session: AsyncSession, statement: object, match: str = "not allowed|append-only") -> None:
    savepoint = await session.begin_nested()
    with pytest.raises(exc.DBAPIError, match=match):
        await session.execute(statement)  # type: ignore[call-overload]
    await savepoint.rollback()


@pytest.fixture
async def chained(audit_session: AsyncSession, audit_clock: ManualClock, audit_keyring: FileKeyring) -> int:
    await append_and_chain(audit_session, audit_clock, example_steps(1, audit_clock.now()))
    await seal(session=audit_session, clock=audit_clock, keyring=audit_keyring, policy=CheckpointPolicy(), wait=True)
    return (await read_chain_head(audit_session)).seq


async def test_entries_cannot_be_updated(audit_session: AsyncSession, chained: int) -> None:
    await _refused(audit_session, update(ENTRIES).where(ENTRIES.c.seq == chained).values(actor_id="mallory"))
    await _refused(audit_session, update(ENTRIES).values(detail="{}"))


async def test_entries_cannot_be_deleted(audit_session: AsyncSession, chained: int) -> None:
    await _refused(audit_session, delete(ENTRIES).where(ENTRIES.c.seq == chained))
    await _refused(audit_session, delete(ENTRIES))


async def test_checkpoints_cannot_be_updated_or_deleted(audit_session: AsyncSession, chained: int) -> None:
    assert chained > 0
    await _refused(audit_session, update(CHECKPOINTS).values(signature="AAAA"))
    await _refused(audit_session, delete(CHECKPOINTS))


@pytest.mark.parametrize("db_kind", ["postgresql"], indirect=True)  # SQLite has no TRUNCATE (DELETE: above)
async def test_tables_cannot_be_truncated(audit_session: AsyncSession, db_kind: str, chained: int) -> None:
    assert chained > 0
    for table in ("audit_entries", "audit_checkpoints", "audit_inbox", "audit_chain_head"):
        await _refused(audit_session, text(f"TRUNCATE {table}"))


async def test_the_chain_head_never_moves_back_or_disappears(audit_session: AsyncSession, chained: int) -> None:
    head = await read_chain_head(audit_session)
    await _refused(audit_session, update(HEAD).values(seq=head.seq - 1), "moves forward")
    await _refused(audit_session, update(HEAD).values(seq=head.seq + 1, entry_hash="f" * 64), "moves forward")
    await _refused(audit_session, delete(HEAD))
    assert await read_chain_head(audit_session) == head


async def test_a_queued_entry_cannot_be_dropped_before_it_is_chained(
    audit_session: AsyncSession, audit_clock: ManualClock, chained: int
) -> None:
    assert chained > 0
    # PostgreSQL queues through append_entry; SQLite chains at once, so queue one by hand there.
    inbox_id = (await audit_session.execute(insert(INBOX).values(
        recorded_at=audit_clock.now(), actor_type="system", actor_id="voicelog", action="admin.changed",
        detail='{"change":"set","setting":"x"}').returning(INBOX.c.id))).scalar_one()
    await _refused(audit_session, delete(INBOX).where(INBOX.c.id == inbox_id), "not chained yet")
    await _refused(audit_session, update(INBOX).where(INBOX.c.id == inbox_id).values(actor_id="mallory"))


async def test_a_checkpoint_must_extend_the_last_one(
    audit_session: AsyncSession, audit_clock: ManualClock, chained: int
) -> None:
    head = await read_chain_head(audit_session)
    forged = {"number": 99, "head_seq": head.seq, "head_hash": head.entry_hash, "signed_at": audit_clock.now(),
              "key_id": "ed25519:0000000000000000", "prev_signature": "", "signature": "AAAA"}
    await _refused(audit_session, insert(CHECKPOINTS).values(forged), "does not extend")
    await _refused(audit_session, insert(CHECKPOINTS).values({**forged, "number": 1}),
                   "does not extend|first checkpoint")
    assert chained == head.seq
