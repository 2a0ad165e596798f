"""Appending to the audit trail (C6): the one function every other service calls, and the sequencer.

An entry is written in the caller's transaction, so a change without its entry cannot commit.

- SQLite chains it at once: the first statement takes SQLite's writer lock (a write to the chain head),
  so the head read next is the latest and no other writer can move it before the caller commits.
- PostgreSQL queues it in `audit_inbox` (no lock: writers commit concurrently, group commit works) and
  the sequencer chains queued entries in batches under a row lock on the chain head: this process's at
  once after the commit wakes it, others' within a poll (`AuditSettings.sequencer_interval_s`, slowing to
  `sequencer_quiet_poll_s` while the inbox stays empty). The window a queued entry spends unchained is inside the window
  every entry spends unsealed before the next signed checkpoint, so it weakens nothing the checkpoints
  guarantee (docs/AUDIT.md, "Appending").

Either way the database refuses any insert that does not extend the chain head by exactly one (trigger),
so there is one chain, without forks or gaps, whatever the number of processes and replicas.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, cast

from sqlalchemy import Table, delete, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import (
    MAX_DETAIL_BYTES,
    NO_SUBJECTS,
    Actor,
    ActorType,
    AuditAction,
    InvalidAuditEntry,
    JSONValue,
    Subjects,
    validate_entry,
    without_absent,
)
from app.audit.canonical import canonical_json, canonical_time, encode_entry
from app.audit.entry_mac import EntryMacKeys, canonical_nonce, encode_content, entry_mac_for, new_nonce
from app.audit.models import AuditChainHead, AuditEntryRow, AuditInboxRow
from app.audit.wake import entries_queued
from app.clock import Clock
from app.logs import get_logger
from app.transaction import after_commit_once

log = get_logger("voicelog.audit")

ENTRIES: Final = cast(Table, AuditEntryRow.__table__)
INBOX: Final = cast(Table, AuditInboxRow.__table__)
HEAD: Final = cast(Table, AuditChainHead.__table__)

CONTENT_COLUMNS: Final = (
    "recorded_at", "actor_type", "actor_id", "action",
    "ticket_id", "request_id", "grant_id", "saw_id", "resource_id", "detail",
)

# Built once: the statement cache keys on them, and the hot path skips building a statement per entry.
QUEUE_ENTRY: Final = insert(INBOX).returning(INBOX.c.id)
CHAIN_ENTRY: Final = insert(ENTRIES)
_LOCK_HEAD_PG = text("SELECT seq, entry_hash FROM audit_chain_head WHERE id = 1 FOR UPDATE")
_TRY_LOCK_HEAD_PG = text("SELECT seq, entry_hash FROM audit_chain_head WHERE id = 1 FOR UPDATE SKIP LOCKED")
# A write is the only way to take SQLite's writer lock inside a deferred transaction; it changes nothing.
_LOCK_HEAD_SQLITE = text("UPDATE audit_chain_head SET seq = seq WHERE id = 1 RETURNING seq, entry_hash")


@dataclass(frozen=True)
class ChainHead:
    seq: int
    entry_hash: str


@dataclass(frozen=True)
class AuditEntry:
    """One entry as written. `seq`, `prev_hash` and `entry_hash` are None while it waits in the inbox."""

    recorded_at: datetime
    actor: Actor
    action: AuditAction
    subjects: Subjects
    detail_json: str
    seq: int | None = None
    prev_hash: str | None = None
    entry_hash: str | None = None
    inbox_id: int | None = None
    detail: Mapping[str, JSONValue] = field(default_factory=dict, compare=False)

    @property
    def chained(self) -> bool:
        return self.seq is not None


def _content_values(
    recorded_at: datetime, actor: Actor, action: AuditAction, subjects: Subjects, detail_json: str
) -> dict[str, Any]:
    return {
        "recorded_at": recorded_at,
        "actor_type": actor.type.value,
        "actor_id": actor.id,
        "action": action.value,
        "ticket_id": subjects.ticket,
        "request_id": subjects.request_id,
        "grant_id": subjects.grant,
        "saw_id": subjects.saw,
        "resource_id": subjects.resource,
        "detail": detail_json,
    }


def _content_bytes(values: Mapping[str, Any]) -> bytes:
    """What a writer's MAC covers besides its nonce (docs/AUDIT.md, "Entry MACs")."""
    return encode_content(
        canonical_time(values["recorded_at"]), values["actor_type"], values["actor_id"], values["action"],
        values["ticket_id"], values["request_id"], values["grant_id"], values["saw_id"], values["resource_id"],
        values["detail"],
    )


def _link(values: dict[str, Any], seq: int, prev_hash: str, mac: EntryMacKeys | None) -> dict[str, Any]:
    """Give content its place in the chain: seq, prev hash, its own hash (canonical encoding) and its MAC.

    With `mac` None the entry is chained unauthenticated: the verifier reports it as forged."""
    digest = hashlib.sha256(encode_entry(
        seq, values["recorded_at"], values["actor_type"], values["actor_id"], values["action"],
        values["ticket_id"], values["request_id"], values["grant_id"], values["saw_id"],
        values["resource_id"], values["detail"], prev_hash,
    )).hexdigest()
    return {**values, "seq": seq, "prev_hash": prev_hash, "entry_hash": digest,
            "mac": None if mac is None else mac.entry_mac(seq, digest)}


def dialect_name(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


async def lock_chain_head(session: AsyncSession, *, wait: bool = True) -> ChainHead | None:
    """Take the chain lock for the rest of the caller's transaction and read the head.

    Returns None only with `wait=False` on PostgreSQL when another transaction holds the lock.
    """
    if dialect_name(session) == "postgresql":
        result = await session.execute(_LOCK_HEAD_PG if wait else _TRY_LOCK_HEAD_PG)
    else:
        result = await session.execute(_LOCK_HEAD_SQLITE)
    row = result.one_or_none()
    if row is None:
        if not wait:
            return None
        raise RuntimeError("audit_chain_head has no row: is the database migrated to 0002_audit?")
    return ChainHead(seq=int(row[0]), entry_hash=str(row[1]))


async def read_chain_head(session: AsyncSession) -> ChainHead:
    """The head as the database states it (no lock)."""
    row = (await session.execute(select(HEAD.c.seq, HEAD.c.entry_hash).where(HEAD.c.id == 1))).one()
    return ChainHead(seq=int(row[0]), entry_hash=str(row[1]))


def prepare_detail(
    action: AuditAction, actor: Actor, subjects: Subjects, detail: Mapping[str, JSONValue] | None
) -> str:
    """Validate an entry against its action's schema and return its canonical detail text."""
    values = without_absent(action, detail or {})
    validate_entry(action, actor, subjects, values)
    detail_json = canonical_json(values)
    if len(detail_json) > MAX_DETAIL_BYTES:
        raise InvalidAuditEntry(f"{action.value}: detail is {len(detail_json)} bytes, at most {MAX_DETAIL_BYTES}")
    return detail_json


async def append_entry(
    *,
    session: AsyncSession,
    clock: Clock,
    actor: Actor,
    action: AuditAction,
    subjects: Subjects | None = None,
    detail: Mapping[str, JSONValue] | None = None,
    chain_now: bool | None = None,
) -> AuditEntry:
    """Write one audit entry in the caller's transaction (the caller commits; this only flushes).

    `chain_now=None` picks the database's way (SQLite: chained at once; PostgreSQL: queued for the
    sequencer). `chain_now=True` on PostgreSQL chains at once under the head row lock, which serializes
    every appender until it commits: keep it for rare entries. Append as late in the transaction as you
    can: on SQLite (and with chain_now) the chain stays locked until the caller commits.
    """
    subjects = subjects or NO_SUBJECTS
    detail_json = prepare_detail(action, actor, subjects, detail)
    recorded_at = clock.now().astimezone(UTC)
    # The caller's own changes reach the database first: their errors surface before the chain is locked.
    await session.flush()
    if chain_now is None:
        chain_now = dialect_name(session) != "postgresql"
    mac = entry_mac_for(session)
    if chain_now:
        head = await lock_chain_head(session)
        assert head is not None  # noqa: S101 - wait=True never returns None
        entry, _ = await _append_prepared(session, head, recorded_at, actor, action, subjects, detail_json, mac)
        return entry
    values = _content_values(recorded_at, actor, action, subjects, detail_json)
    nonce = new_nonce()
    values["nonce"] = nonce.hex()
    values["writer_mac"] = None if mac is None else mac.inbox_mac(_content_bytes(values), nonce)
    inbox_id = (await session.execute(QUEUE_ENTRY, values)).scalar_one()
    after_commit_once(session, entries_queued)  # this process's keeper chains it right after the commit
    return AuditEntry(recorded_at=recorded_at, actor=actor, action=action, subjects=subjects,
                      detail_json=detail_json, inbox_id=int(inbox_id), detail=json.loads(detail_json))


async def append_locked(
    session: AsyncSession,
    head: ChainHead,
    *,
    recorded_at: datetime,
    actor: Actor,
    action: AuditAction,
    subjects: Subjects | None = None,
    detail: Mapping[str, JSONValue] | None = None,
    mac: EntryMacKeys | None = None,
) -> tuple[AuditEntry, ChainHead]:
    """Chain one entry right after `head`; the caller already holds the chain lock (the keeper does).
    `mac`: the keys to authenticate it with (default: the session's, as append_entry finds them)."""
    subjects = subjects or NO_SUBJECTS
    detail_json = prepare_detail(action, actor, subjects, detail)
    return await _append_prepared(session, head, recorded_at.astimezone(UTC), actor, action, subjects, detail_json,
                                  mac or entry_mac_for(session))


async def _append_prepared(
    session: AsyncSession, head: ChainHead, recorded_at: datetime, actor: Actor, action: AuditAction,
    subjects: Subjects, detail_json: str, mac: EntryMacKeys | None,
) -> tuple[AuditEntry, ChainHead]:
    values = _content_values(recorded_at, actor, action, subjects, detail_json)
    linked = _link(values, head.seq + 1, head.entry_hash, mac)
    await session.execute(CHAIN_ENTRY, linked)
    entry = AuditEntry(
        recorded_at=recorded_at, actor=actor, action=action, subjects=subjects, detail_json=detail_json,
        seq=linked["seq"], prev_hash=linked["prev_hash"], entry_hash=linked["entry_hash"],
        detail=json.loads(detail_json),
    )
    return entry, ChainHead(seq=linked["seq"], entry_hash=linked["entry_hash"])


async def chain_locked(
    session: AsyncSession, head: ChainHead, entries: Sequence[tuple[dict[str, Any], int | None]],
    *, mac: EntryMacKeys | None, authentic: Sequence[bool] | None = None,
) -> ChainHead:
    """Chain content rows after `head` (the caller holds the chain lock); returns the new head.

    Each entry gets its MAC, except those `authentic` marks False: they are chained without one (the inbox is
    append-only, so a forged row is kept, and the verifier names it)."""
    if not entries:
        return head
    seq, prev = head.seq, head.entry_hash
    rows = []
    for index, (values, inbox_id) in enumerate(entries):
        seq += 1
        ok = authentic is None or authentic[index]
        linked = _link(values, seq, prev, mac if ok else None)
        linked["inbox_id"] = inbox_id
        rows.append(linked)
        prev = linked["entry_hash"]
    # RETURNING makes SQLAlchemy send multi-row INSERTs ("insertmanyvalues", 1000 rows a statement), so
    # PostgreSQL's chain trigger runs once per statement rather than once per row.
    await session.execute(insert(ENTRIES).returning(ENTRIES.c.seq), rows)
    return ChainHead(seq=seq, entry_hash=prev)


async def integrate_pending(session: AsyncSession, *, limit: int = 2000, wait: bool = False) -> int:
    """The sequencer's step: chain up to `limit` queued entries in inbox order. Returns how many.

    Runs in the caller's transaction, which must commit it. With `wait=False` it gives up at once when
    another replica's sequencer (or an inline appender) holds the chain lock.
    """
    head = await lock_chain_head(session, wait=wait)
    if head is None:
        return 0
    return (await integrate_locked(session, head, limit=limit, mac=entry_mac_for(session))).count


@dataclass(frozen=True)
class Integrated:
    count: int
    head: ChainHead
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason -> queued rows chained without a MAC


QUEUED_COLUMNS: Final = (*CONTENT_COLUMNS, "nonce", "writer_mac")


async def integrate_locked(
    session: AsyncSession, head: ChainHead, *, limit: int, mac: EntryMacKeys | None
) -> Integrated:
    """Chain queued entries after `head` (lock held) and delete them from the inbox.

    A queued row is chained authenticated only if its nonce is canonical (32 lower-case hex digits), its
    writer MAC verifies under a key valid at the seq it gets, and its nonce was never chained (nor seen
    earlier in this batch); any other row is chained without a MAC and raises an alarm (C6)."""
    columns = [INBOX.c.id, *(INBOX.c[name] for name in QUEUED_COLUMNS)]
    result = await session.execute(select(*columns).order_by(INBOX.c.id).limit(limit))
    rows = [(int(row[0]), dict(zip(QUEUED_COLUMNS, row[1:], strict=True))) for row in result]
    if not rows:
        return Integrated(0, head)
    # Nonces compare as bytes: the canonical spelling is their one text form (writers and the CHECK use it).
    nonces = sorted({raw.hex() for _, values in rows if (raw := canonical_nonce(values["nonce"])) is not None})
    seen: set[bytes] = set()
    if nonces:
        chained = await session.execute(select(ENTRIES.c.nonce).where(ENTRIES.c.nonce.in_(nonces)))
        seen = {raw for n in chained.scalars() if (raw := canonical_nonce(n)) is not None}
    authentic: list[bool] = []
    rejected: dict[str, int] = {}
    for index, (inbox_id, values) in enumerate(rows):
        raw_nonce = canonical_nonce(values["nonce"])
        reason = _inbox_rejection(values, raw_nonce, mac, seen, head.seq + 1 + index)
        if raw_nonce is not None:
            seen.add(raw_nonce)
        elif values["nonce"] is not None:
            # Queued before migration 0011 made the spelling a CHECK: chain it without its nonce, which the
            # CHECK on audit_entries would refuse (and with it the whole batch, stalling the chain).
            values["nonce"] = None
        authentic.append(reason is None)
        if reason is not None:
            rejected[reason] = rejected.get(reason, 0) + 1
            log.error("audit.inbox.unauthenticated", inbox_id=inbox_id, reason=reason)
    pending = [({k: v for k, v in values.items() if k != "writer_mac"}, inbox_id) for inbox_id, values in rows]
    head = await chain_locked(session, head, pending, mac=mac, authentic=authentic)
    await session.execute(delete(INBOX).where(INBOX.c.id.in_([inbox_id for inbox_id, _ in rows])))
    return Integrated(len(rows), head, rejected)


def _inbox_rejection(values: Mapping[str, Any], raw_nonce: bytes | None, mac: EntryMacKeys | None,
                     seen: set[bytes], seq: int) -> str | None:
    """Why a queued row (to be chained at `seq`) cannot be chained as authentic, or None."""
    if mac is None:
        return "no_key"
    if values["nonce"] is None or values["writer_mac"] is None:
        return "missing_mac"
    if raw_nonce is None:  # not the one spelling of a nonce: a re-spelled copy is no new nonce
        return "bad_mac"
    if raw_nonce in seen:
        return "replayed"
    if not mac.check_inbox_mac(values["writer_mac"], _content_bytes(values), raw_nonce, seq):
        return "bad_mac"
    return None


@dataclass(frozen=True)
class PendingState:
    count: int
    oldest: datetime | None


async def pending_state(session: AsyncSession) -> PendingState:
    """How many entries wait in the inbox, and since when (a stalled sequencer shows here)."""
    row = (await session.execute(select(func.count(), func.min(INBOX.c.recorded_at)))).one()
    oldest = row[1]
    if isinstance(oldest, str):  # aggregate over SQLite text: not run through the column type
        oldest = datetime.fromisoformat(oldest).replace(tzinfo=UTC)
    return PendingState(count=int(row[0]), oldest=oldest)


def actor_of(actor_type: str, actor_id: str) -> Actor:
    return Actor(ActorType(actor_type), actor_id)
