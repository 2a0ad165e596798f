"""The verifier (C6): recompute the chain, check every checkpoint, name the first damage and its kind.

Used by `voicelog audit verify`, GET /audit/verify and the scheduled job. It trusts nothing stored in the
database: only the canonical encoding, the public keys it is given, and the exported checkpoints.
What it can prove is in docs/AUDIT.md ("Verifier semantics"): everything up to the newest checkpoint is
sealed; after it, an edit, deletion, insertion or reordering made without recomputing hashes is still
found, and tail truncation is found through the chain head row and the exported checkpoints. Given the entry
MAC keys it also reports every entry without a valid MAC (one written with SQL alone) as `forged`, and it
says how much of the tail no exported checkpoint anchors yet (entries and seconds).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import ColumnElement, DateTime, String, func, or_, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.canonical import GENESIS_HASH, canonical_time, encode_entry_text
from app.audit.checkpoints import Checkpoint, list_checkpoints
from app.audit.entry_mac import EntryMacKeys
from app.audit.keys import PublicKeySet, SignatureCheck
from app.audit.service import ENTRIES, HEAD, ChainHead, dialect_name, pending_state

ENTRY_COLUMNS: Final = (
    ENTRIES.c.seq, ENTRIES.c.recorded_at, ENTRIES.c.actor_type, ENTRIES.c.actor_id, ENTRIES.c.action,
    ENTRIES.c.ticket_id, ENTRIES.c.request_id, ENTRIES.c.grant_id, ENTRIES.c.saw_id, ENTRIES.c.resource_id,
    ENTRIES.c.detail, ENTRIES.c.prev_hash, ENTRIES.c.entry_hash, ENTRIES.c.mac,
)
SEQ, PREV, HASH, MAC = 0, 11, 12, 13
NONCE_PATTERN: Final = "^[0-9a-f]{32}$"  # migration 0011's CHECK
NONCE_TEXT_LENGTH: Final = 32
PG_CANONICAL_TIME: Final = 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'  # to_char() of canonical_time()
PG_ENTRIES_AFTER: Final = (
    "SELECT seq, to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), actor_type, actor_id, "
    "action, ticket_id, request_id, grant_id, saw_id, resource_id, detail, prev_hash, entry_hash, mac "
    "FROM audit_entries WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3"
)
RENUMBER_WINDOW: Final = 256  # how far a moved entry's original seq is searched for
YIELD_EVERY: Final = 2047  # rows hashed between two chances for the prefetch to progress


class DamageKind(StrEnum):
    EDITED = "edited"
    DELETED = "deleted"
    INSERTED = "inserted"
    REORDERED = "reordered"
    TAIL_TRUNCATED = "tail_truncated"
    BAD_SIGNATURE = "bad_signature"
    FORGED = "forged"


@dataclass(frozen=True)
class Damage:
    """The first damage found: its kind, the first bad position (seq) and, for checkpoints, which one."""

    kind: DamageKind
    seq: int
    message: str
    checkpoint: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "seq": self.seq, "checkpoint": self.checkpoint, "message": self.message}


@dataclass(frozen=True)
class MacKeyUse:
    """An entry MAC key as the walk found it: the highest seq with a valid MAC under it (None: none), whether
    it is the current key, and the last seq it may MAC (a retired key's pin; None: unbounded)."""

    key_id: str
    current: bool
    last_seq: int | None
    highest_seq: int | None

    def to_json(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "current": self.current, "last_seq": self.last_seq,
                "highest_seq": self.highest_seq}


@dataclass(frozen=True)
class VerificationResult:
    ok: bool
    damage: Damage | None
    from_seq: int
    entries_checked: int
    head_seq: int  # last entry verified
    head_hash: str
    checkpoints_checked: int
    sealed_through: int  # highest seq covered by a checkpoint whose signature and hash verified
    pending: int
    oldest_pending_age_s: float | None
    stalled: bool
    checked_at: datetime
    duration_s: float
    notes: list[str] = field(default_factory=list)
    anchored_through: int = 0  # highest seq an exported (anchored) checkpoint covers
    unanchored_entries: int = 0  # chained entries after it, plus queued ones
    unanchored_s: float | None = None  # age of the oldest of those (None: everything is anchored)
    macs: str = "not_checked"  # "checked" with the entry MAC keys; "not_checked" with public keys only
    forged_entries: int = 0
    mac_keys: tuple[MacKeyUse, ...] = ()  # with the entry MAC keys: each key and the highest seq it MACs

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "damage": None if self.damage is None else self.damage.to_json(),
            "from_seq": self.from_seq,
            "entries_checked": self.entries_checked,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "checkpoints_checked": self.checkpoints_checked,
            "sealed_through": self.sealed_through,
            "pending": self.pending,
            "oldest_pending_age_s": self.oldest_pending_age_s,
            "stalled": self.stalled,
            "checked_at": self.checked_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "anchored_through": self.anchored_through,
            "unanchored_entries": self.unanchored_entries,
            "unanchored_s": None if self.unanchored_s is None else round(self.unanchored_s, 3),
            "macs": self.macs,
            "forged_entries": self.forged_entries,
            "mac_keys": [use.to_json() for use in self.mac_keys],
            "notes": self.notes,
        }


Row = Sequence[Any]


def _digest(row: Row, seq: int | None = None) -> str:
    values = list(row[:12])
    if seq is not None:
        values[0] = seq
    return hashlib.sha256(encode_entry_text(*values)).hexdigest()


def _sqlite_time(value: str) -> str:
    """Canonical time from SQLite's stored text, `YYYY-MM-DD HH:MM:SS.ffffff` (naive UTC, app.db.UTCDateTime)."""
    if len(value) == 26 and value[10] == " ":
        return f"{value[:10]}T{value[11:]}Z"
    moment = datetime.fromisoformat(value)
    return canonical_time(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


class EntryReader:
    """Entries in seq order, a batch at a time (keyset pagination), each row with its time as canonical text.

    Through SQLAlchemy in general; on asyncpg it reads through the driver connection of the same session
    and transaction with one fixed, parameterized statement: row objects are the verifier's main cost there,
    and asyncpg's records are about twice as cheap as SQLAlchemy rows.
    """

    def __init__(self, session: AsyncSession, limit: int) -> None:
        self.session = session
        self.limit = limit
        self.dialect = dialect_name(session)
        self.driver = session.get_bind().dialect.driver
        time_column: ColumnElement[Any]
        self.convert: Callable[[Any], str] | None
        if self.dialect == "sqlite":
            time_column, self.convert = type_coerce(ENTRIES.c.recorded_at, String()), _sqlite_time
        else:
            utc = func.timezone("UTC", type_coerce(ENTRIES.c.recorded_at, DateTime(timezone=True)))
            time_column, self.convert = func.to_char(utc, PG_CANONICAL_TIME), None
        columns: list[ColumnElement[Any]] = list(ENTRY_COLUMNS)
        columns[1] = time_column
        self.query = select(*columns).where(ENTRIES.c.seq <= limit).order_by(ENTRIES.c.seq)

    async def after(self, seq: int, batch: int) -> list[Row]:
        if self.driver == "asyncpg":
            driver = (await (await self.session.connection()).get_raw_connection()).driver_connection
            assert driver is not None  # noqa: S101 - an open session's connection
            records: list[Row] = await driver.fetch(PG_ENTRIES_AFTER, seq, self.limit, batch)
            return records
        result = await self.session.execute(self.query.where(ENTRIES.c.seq > seq).limit(batch))
        if self.convert is None:
            return list(result.all())
        convert = self.convert
        return [(r[0], convert(r[1]), *r[2:]) for r in result.all()]


def _native_seq(row: Row) -> int | None:
    """The seq under which the row's stored hash is right: its own, one nearby (it moved), or None (edited)."""
    if _digest(row) == row[HASH]:
        return int(row[SEQ])
    for delta in range(1, RENUMBER_WINDOW + 1):
        for candidate in (row[SEQ] + delta, row[SEQ] - delta):
            if candidate >= 1 and _digest(row, candidate) == row[HASH]:
                return int(candidate)
    return None


async def _head_snapshot(session: AsyncSession) -> tuple[ChainHead, int]:
    """The head row and the highest stored seq, read in one statement (one snapshot on both databases)."""
    newest = select(func.max(ENTRIES.c.seq)).scalar_subquery()
    row = (await session.execute(select(HEAD.c.seq, HEAD.c.entry_hash, newest).where(HEAD.c.id == 1))).one()
    return ChainHead(int(row[0]), str(row[1])), int(row[2] or 0)


async def _hash_exists(session: AsyncSession, entry_hash: str) -> bool:
    result = await session.execute(select(ENTRIES.c.seq).where(ENTRIES.c.entry_hash == entry_hash).limit(1))
    return result.first() is not None


@dataclass
class _Anchor:
    seq: int
    entry_hash: str
    prev_hash: str | None  # the hash before it (None at the genesis or an unverified --from anchor)


@dataclass
class _Walk:
    """Where the walk stands: the last good entry, and what the checkpoints have confirmed so far."""

    seq: int
    entry_hash: str
    prev_hash: str | None
    last_pinned_ok: int
    sealed_through: int = 0
    checked: int = 0
    mac_keys: EntryMacKeys | None = None
    mac_from: int = 1
    first_forged: int | None = None
    forged: int = 0
    highest: dict[str, int] = field(default_factory=dict)  # MAC key id -> highest seq it validly MACs

    def advance(self, rows: Sequence[Row], start: int, stop: int, pinned: dict[int, tuple[str, int]]
                ) -> tuple[int | None, tuple[str, int] | None]:
        """Walk rows[start:stop]; stop at the first that does not continue the chain (its index) or that
        contradicts a checkpoint (its index and the pin). The verifier's hot loop: plain locals only."""
        sha256, encode = hashlib.sha256, encode_entry_text
        mac_key = None if self.mac_keys is None else self.mac_keys.entry_mac_key
        mac_from, highest = self.mac_from, self.highest
        seq, entry_hash, prev_hash = self.seq, self.entry_hash, self.prev_hash
        bad: tuple[int | None, tuple[str, int] | None] = (None, None)
        for index in range(start, stop):
            row = rows[index]
            digest = sha256(encode(*row[:12])).hexdigest()
            if digest != row[HASH] or row[PREV] != entry_hash or row[SEQ] != seq + 1:
                bad = (index, None)
                break
            pin = pinned.get(seq + 1)
            if pin is not None:
                if pin[0] != digest:
                    bad = (index, pin)
                    break
                self.last_pinned_ok = self.sealed_through = seq + 1
            if mac_key is not None and seq + 1 >= mac_from:
                key_id = mac_key(row[MAC], seq + 1, digest)
                if key_id is None:
                    # Chain-consistent but not written with a key valid there: SQL alone made it (C6). Walk on.
                    self.forged += 1
                    if self.first_forged is None:
                        self.first_forged = seq + 1
                else:
                    highest[key_id] = seq + 1
            seq, prev_hash, entry_hash = seq + 1, entry_hash, digest
            self.checked += 1
        self.seq, self.entry_hash, self.prev_hash = seq, entry_hash, prev_hash
        return bad


async def _classify(
    session: AsyncSession, anchor: _Anchor, row: Row, following: Row | None, walked: bool, head_seq: int
) -> Damage:
    """Name the damage at the first row that does not continue the chain (docs/AUDIT.md has the rules)."""
    expected = anchor.seq + 1
    seq = int(row[SEQ])
    if seq < expected:
        return Damage(DamageKind.INSERTED, seq, f"entry {seq} sits before the chain's next position {expected}")
    native = _native_seq(row)
    if native is None:
        if following is not None and following[PREV] == anchor.entry_hash:
            return Damage(DamageKind.INSERTED, seq, f"entry {seq} is not part of the chain: the next entry "
                                                    f"links to entry {anchor.seq}")
        if seq > head_seq:
            return Damage(DamageKind.INSERTED, seq, f"entry {seq} lies beyond the chain head {head_seq}")
        return Damage(DamageKind.EDITED, seq, f"entry {seq} does not match its hash")
    if native > seq:
        if await _hash_exists(session, row[PREV]):
            return Damage(DamageKind.REORDERED, seq, f"the entry at {seq} was written as entry {native}")
        return Damage(DamageKind.DELETED, seq, f"entries were deleted before {seq} and the rest renumbered "
                                               f"(the entry at {seq} was written as {native})")
    if native < seq:
        if anchor.prev_hash is not None and row[PREV] == anchor.prev_hash:
            return Damage(DamageKind.INSERTED, anchor.seq,
                          f"entry {anchor.seq} was inserted: the entry after it links to the one before it")
        if seq > expected and row[PREV] == anchor.entry_hash:
            return Damage(DamageKind.EDITED, expected, f"entries from {expected} on were renumbered")
        return Damage(DamageKind.REORDERED, seq, f"the entry at {seq} was written as entry {native}")
    if seq > expected:
        missing = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
        return Damage(DamageKind.DELETED, expected, f"entries {missing} are missing")
    if seq > head_seq:
        return Damage(DamageKind.INSERTED, seq, f"entry {seq} lies beyond the chain head {head_seq}")
    # Intact and in place, but not linked to the entry before it: that one was replaced or slipped in.
    if walked and anchor.prev_hash is not None and row[PREV] == anchor.prev_hash:
        return Damage(DamageKind.INSERTED, anchor.seq, f"entry {anchor.seq} was inserted")
    if walked:
        return Damage(DamageKind.EDITED, anchor.seq,
                      f"entry {anchor.seq} was replaced (entry {seq} does not link to it)")
    return Damage(DamageKind.EDITED, seq, f"entry {seq} does not link to the entry before it")


def _pin_damage(anchor: _Anchor, row: Row, following: Row | None, pin: tuple[str, int], last_ok: int) -> Damage:
    """An entry that is consistent with the chain but not with a verified checkpoint: hashes were recomputed."""
    seq, (pinned_hash, number) = int(row[SEQ]), pin
    if following is not None and following[PREV] == anchor.entry_hash:
        return Damage(DamageKind.INSERTED, seq, f"entry {seq} was inserted where checkpoint {number} "
                                                "pins another one", number)
    if following is not None and following[PREV] == pinned_hash:
        return Damage(DamageKind.EDITED, seq, f"entry {seq} was replaced: it does not match checkpoint {number}",
                      number)
    return Damage(DamageKind.EDITED, last_ok + 1, f"entries {last_ok + 1}..{seq} were rewritten: entry {seq} "
                                                  f"does not match checkpoint {number}", number)


def _check_checkpoints(
    stored: Sequence[Checkpoint], exported: Sequence[Checkpoint], keys: PublicKeySet
) -> tuple[list[Damage], dict[int, tuple[str, int]], int, int]:
    """Signatures, windows and the prev-signature chain of every checkpoint, stored and exported.

    Returns the damages found, the hash each verified checkpoint pins (seq -> (hash, number)), the
    number of checkpoints checked and the highest head seq a verified exported checkpoint names.
    """
    damages: list[Damage] = []
    pinned: dict[int, tuple[str, int]] = {}
    checked = 0
    anchored = 0
    for source, checkpoints in (("stored", stored), ("exported", exported)):
        previous: Checkpoint | None = None
        for cp in checkpoints:
            checked += 1
            verdict = keys.check(cp.key_id, cp.message(), cp.signature, cp.signed_at)
            if verdict is not SignatureCheck.OK:
                damages.append(Damage(DamageKind.BAD_SIGNATURE, cp.head_seq,
                                      f"{source} checkpoint {cp.number}: {verdict.value}", cp.number))
                previous = cp
                continue
            expected_number = 1 if previous is None else previous.number + 1
            expected_prev = b"" if previous is None else previous.signature
            if cp.number != expected_number or cp.prev_signature != expected_prev:
                start = 1 if previous is None else previous.head_seq + 1
                missing = f"{expected_number}" if cp.number == expected_number + 1 else \
                    f"{expected_number}..{cp.number - 1}"
                damages.append(Damage(DamageKind.DELETED, start, f"{source} checkpoint {missing} is missing",
                                      expected_number))
            pinned.setdefault(cp.head_seq, (cp.head_hash, cp.number))
            if source == "exported":
                anchored = max(anchored, cp.head_seq)
            previous = cp
    by_number = {cp.number: cp for cp in stored}
    for cp in exported:
        twin = by_number.get(cp.number)
        if twin is None:
            if cp.number > (stored[-1].number if stored else 0):
                damages.append(Damage(DamageKind.DELETED, cp.head_seq,
                                      f"checkpoint {cp.number} was exported but is not in the database", cp.number))
        elif twin != cp:
            damages.append(Damage(DamageKind.EDITED, min(cp.head_seq, twin.head_seq),
                                  f"checkpoint {cp.number} differs from its exported copy", cp.number))
    return damages, pinned, checked, anchored


async def verify_chain(
    *,
    session: AsyncSession,
    keys: PublicKeySet,
    exported: Sequence[Checkpoint] = (),
    from_seq: int = 1,
    now: datetime,
    pending_alarm_s: float = 300.0,
    batch: int = 20_000,
    mac_keys: EntryMacKeys | None = None,
    mac_from_seq: int = 1,
) -> VerificationResult:
    """Check the chain from `from_seq` and every checkpoint; the result names the first damage, if any.

    With `mac_keys` every entry from `mac_from_seq` on must carry a valid MAC (else: `forged`); without
    them (an auditor holding only the public keys) MACs are not checked and the result says so."""
    started = time.perf_counter()
    from_seq = max(1, from_seq)
    # Order matters when writers are busy: exported checkpoints (read by the caller) and stored ones come
    # before the head snapshot, so every checkpoint read refers to entries the walk will see.
    stored = await list_checkpoints(session)
    damages, pinned, checkpoints_checked, anchored = _check_checkpoints(stored, exported, keys)
    head, last_stored_seq = await _head_snapshot(session)
    limit = max(head.seq, last_stored_seq)  # entries appended while we verify wait for the next run
    notes: list[str] = []

    anchor = _Anchor(0, GENESIS_HASH, None)
    if from_seq > 1:
        before = (await session.execute(
            select(ENTRIES.c.seq, ENTRIES.c.entry_hash, ENTRIES.c.prev_hash).where(ENTRIES.c.seq == from_seq - 1)
        )).one_or_none()
        if before is None:
            notes.append(f"no entry {from_seq - 1} to anchor --from {from_seq}; starting unanchored")
            anchor = _Anchor(from_seq - 1, "", None)
        else:
            anchor = _Anchor(int(before[0]), str(before[1]), None)
    unanchored = anchor.entry_hash == ""
    walk_damage: Damage | None = None

    reader = EntryReader(session, limit)
    rows = await reader.after(from_seq - 1, batch)
    if unanchored and rows:
        # `--from` past a missing entry: trust the first entry's own link, as the notes say.
        anchor = _Anchor(int(rows[0][SEQ]) - 1, str(rows[0][PREV]), None)
    walk = _Walk(anchor.seq, anchor.entry_hash, anchor.prev_hash, last_pinned_ok=anchor.seq, mac_keys=mac_keys,
                 mac_from=mac_from_seq)
    while rows:
        # The next batch is queried while this one is hashed (the database works, we hash).
        prefetch = asyncio.create_task(reader.after(rows[-1][SEQ], batch)) if len(rows) == batch else None
        bad_index: int | None = None
        bad_pin: tuple[str, int] | None = None
        try:
            for start in range(0, len(rows), YIELD_EVERY):
                await asyncio.sleep(0)  # lets the prefetch move on (aiosqlite works in its own thread)
                bad_index, bad_pin = walk.advance(rows, start, min(start + YIELD_EVERY, len(rows)), pinned)
                if bad_index is not None:
                    break
        except BaseException:
            if prefetch is not None:
                prefetch.cancel()
            raise
        next_rows = await prefetch if prefetch is not None else []
        if bad_index is not None:
            anchor = _Anchor(walk.seq, walk.entry_hash, walk.prev_hash)
            following = rows[bad_index + 1] if bad_index + 1 < len(rows) else (next_rows[0] if next_rows else None)
            if bad_pin is not None:
                walk_damage = _pin_damage(anchor, rows[bad_index], following, bad_pin, walk.last_pinned_ok)
            else:
                walk_damage = await _classify(session, anchor, rows[bad_index], following, walk.checked > 0,
                                              head.seq)
            break
        rows = next_rows
    checked, sealed_through = walk.checked, walk.sealed_through
    anchor = _Anchor(walk.seq, walk.entry_hash, walk.prev_hash)

    tail_seq, tail_hash = anchor.seq, anchor.entry_hash
    if walk_damage is None:
        newest_pin = max(pinned, default=0)
        if newest_pin > tail_seq:
            damages.append(Damage(DamageKind.TAIL_TRUNCATED, tail_seq + 1,
                                  f"checkpoint {pinned[newest_pin][1]} covers entry {newest_pin}; "
                                  f"the chain ends at {tail_seq}", pinned[newest_pin][1]))
        if head.seq > tail_seq:
            damages.append(Damage(DamageKind.TAIL_TRUNCATED, tail_seq + 1,
                                  f"the chain head names entry {head.seq}; the chain ends at {tail_seq}"))
        elif head.seq < tail_seq:
            damages.append(Damage(DamageKind.INSERTED, head.seq + 1,
                                  f"entries after the chain head {head.seq} were written around it"))
        elif head.seq >= from_seq and head.entry_hash != tail_hash:
            damages.append(Damage(DamageKind.EDITED, tail_seq, "the last entry does not match the chain head"))
    else:
        damages.append(walk_damage)
    if mac_keys is not None:
        await _forged_by_nonce(session, walk, mac_keys, max(from_seq, mac_from_seq))
    if walk.first_forged is not None:
        damages.append(Damage(DamageKind.FORGED, walk.first_forged,
                              f"entry {walk.first_forged} has no valid MAC: it was not written with the entry key "
                              f"({walk.forged} such entries)"))

    pending = await pending_state(session)
    age = None if pending.oldest is None else max(0.0, (now - pending.oldest).total_seconds())
    stalled = age is not None and age > pending_alarm_s
    if stalled:
        notes.append(f"{pending.count} queued entries, the oldest {age:.0f} s old: is the sequencer running?")
    # The earliest position wins; at a tie the walk's finding is the most precise, then a truncated tail
    # (which also explains checkpoints missing from the database).
    first = min(damages, key=lambda d: (d.seq, d is not walk_damage, d.kind is not DamageKind.TAIL_TRUNCATED,
                                        d.kind is DamageKind.FORGED)) if damages else None
    anchored_through = min(anchored, tail_seq)
    unanchored_entries = max(0, tail_seq - anchored_through) + pending.count
    oldest = await _recorded_at(session, anchored_through + 1) if tail_seq > anchored_through else None
    if pending.oldest is not None and (oldest is None or pending.oldest < oldest):
        oldest = pending.oldest
    unanchored_s = None if oldest is None else max(0.0, (now - oldest).total_seconds())
    return VerificationResult(
        ok=first is None, damage=first, from_seq=from_seq, entries_checked=checked, head_seq=tail_seq,
        head_hash=tail_hash, checkpoints_checked=checkpoints_checked, sealed_through=sealed_through,
        pending=pending.count, oldest_pending_age_s=age, stalled=stalled, checked_at=now,
        duration_s=time.perf_counter() - started, notes=notes, anchored_through=anchored_through,
        unanchored_entries=unanchored_entries, unanchored_s=unanchored_s,
        macs="not_checked" if mac_keys is None else "checked", forged_entries=walk.forged,
        mac_keys=() if mac_keys is None else tuple(
            MacKeyUse(key_id, key_id == mac_keys.current_id, mac_keys.last_seq.get(key_id), walk.highest.get(key_id))
            for key_id in sorted(mac_keys.keys, key=lambda k: (k != mac_keys.current_id, k))),
    )


async def _forged_by_nonce(session: AsyncSession, walk: _Walk, mac_keys: EntryMacKeys, first: int) -> None:
    """Entries with a valid MAC but a nonce not in its one spelling: replays a sequencer chained as authentic
    before migration 0011 (it compared nonce text, not bytes). Counted as forged with the walk's finds."""
    nonce = ENTRIES.c.nonce
    odd: ColumnElement[bool]
    if dialect_name(session) == "postgresql":
        odd = nonce.op("!~")(NONCE_PATTERN)
    else:
        odd = or_(func.length(nonce) != NONCE_TEXT_LENGTH, nonce.op("GLOB")("*[^0-9a-f]*"))
    rows = await session.execute(
        select(ENTRIES.c.seq, ENTRIES.c.mac, ENTRIES.c.entry_hash)
        .where(ENTRIES.c.seq >= first, ENTRIES.c.seq <= walk.seq, nonce.is_not(None), odd).order_by(ENTRIES.c.seq))
    for seq, mac, entry_hash in rows:
        if not mac_keys.check_entry_mac(mac, int(seq), str(entry_hash)):
            continue  # the walk counted it already
        walk.forged += 1
        walk.first_forged = int(seq) if walk.first_forged is None else min(walk.first_forged, int(seq))


async def _recorded_at(session: AsyncSession, seq: int) -> datetime | None:
    moment: datetime | None = (await session.execute(
        select(ENTRIES.c.recorded_at).where(ENTRIES.c.seq == seq))).scalar_one_or_none()
    if moment is None:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


