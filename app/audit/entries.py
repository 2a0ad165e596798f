"""Reading the audit trail entry by entry, for auditors and operators (C6): one query behind the API, the CLI
and the console.

A page is chosen by chain position (`after`, or `before` for the newest entries below a position) and
filtered by action, actor and time. Each entry says whether a signed checkpoint covers it yet. This is a
view of the rows as stored: `voicelog audit verify` (or `GET /audit/verify`) is what proves them intact.
Listing is not itself audited: an auditor following the trail would otherwise write to it on every poll.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import ActorType, AuditAction
from app.audit.canonical import canonical_time
from app.audit.checkpoints import last_checkpoint
from app.audit.service import ENTRIES, pending_state, read_chain_head
from app.errors import InvalidInput

MAX_PAGE: Final = 1000
DEFAULT_PAGE: Final = 100
MAX_SEQ: Final = 2**63 - 1
MAX_ACTOR_LENGTH: Final = 160  # "customer_admin:" + a 128-character id, with room to spare
_RELATIVE = re.compile(r"^(\d{1,6})([smhd])$")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class InvalidEntryFilter(InvalidInput):
    code = "invalid_audit_filter"
    title = "The audit entry filter is not valid"


@dataclass(frozen=True)
class ActorMatch:
    """`TYPE:ID` names one actor exactly; a bare `ID` matches that id whatever its type."""

    id: str
    type: ActorType | None = None

    @classmethod
    def parse(cls, text: str) -> ActorMatch:
        text = text.strip()
        if not text or len(text) > MAX_ACTOR_LENGTH or not text.isprintable():
            raise InvalidEntryFilter(
                f"`actor` must be an id or TYPE:ID, 1 to {MAX_ACTOR_LENGTH} printable characters.")
        kind, sep, rest = text.partition(":")
        if sep and rest and kind in {t.value for t in ActorType}:
            return cls(id=rest, type=ActorType(kind))
        return cls(id=text)


@dataclass(frozen=True)
class EntryFilter:
    actions: frozenset[AuditAction] = frozenset()
    actor: ActorMatch | None = None
    since: datetime | None = None  # included
    until: datetime | None = None  # excluded

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            moment: datetime | None = getattr(self, name)
            if moment is None:
                continue
            if moment.tzinfo is None:
                raise InvalidEntryFilter(f"`{name}` needs a time zone (e.g. a trailing Z for UTC).")
            try:  # the database compares UTC: 9999-12-31T23:00-05:00 has no UTC time
                moment.astimezone(UTC)
            except OverflowError:
                raise InvalidEntryFilter(f"`{name}` is out of range.") from None
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise InvalidEntryFilter("`until` must be later than `since`.")


@dataclass(frozen=True)
class ListedEntry:
    seq: int
    recorded_at: datetime
    action: str
    actor_type: str
    actor_id: str
    subjects: dict[str, str | None]
    detail: dict[str, Any]
    past_last_checkpoint: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "recorded_at": canonical_time(self.recorded_at), "action": self.action,
            "actor": {"type": self.actor_type, "id": self.actor_id}, "subjects": self.subjects,
            "detail": self.detail, "past_last_checkpoint": self.past_last_checkpoint,
        }


@dataclass(frozen=True)
class EntryPage:
    entries: list[ListedEntry]
    head_seq: int  # the newest chained entry
    sealed_through: int  # the newest entry the last signed checkpoint covers (0: none)
    pending: int  # committed, not chained yet: not listed until the sequencer chains them
    next_after: int | None  # pass as `after` for the next (newer) page; None when none can follow
    prev_before: int | None  # pass as `before` for the previous (older) page; None when none can precede

    def to_json(self) -> dict[str, Any]:
        return {"entries": [e.to_json() for e in self.entries], "head_seq": self.head_seq,
                "sealed_through": self.sealed_through, "pending": self.pending, "next_after": self.next_after,
                "prev_before": self.prev_before}


COLUMNS: Final = (
    ENTRIES.c.seq, ENTRIES.c.recorded_at, ENTRIES.c.action, ENTRIES.c.actor_type, ENTRIES.c.actor_id,
    ENTRIES.c.ticket_id, ENTRIES.c.request_id, ENTRIES.c.grant_id, ENTRIES.c.saw_id, ENTRIES.c.resource_id,
    ENTRIES.c.detail,
)


def _filtered(query: Select[Any], where: EntryFilter) -> Select[Any]:
    if where.actions:
        query = query.where(ENTRIES.c.action.in_(sorted(a.value for a in where.actions)))
    if where.actor is not None:
        query = query.where(ENTRIES.c.actor_id == where.actor.id)
        if where.actor.type is not None:
            query = query.where(ENTRIES.c.actor_type == where.actor.type.value)
    if where.since is not None:
        query = query.where(ENTRIES.c.recorded_at >= where.since)
    if where.until is not None:
        query = query.where(ENTRIES.c.recorded_at < where.until)
    return query


def _listed(row: Sequence[Any], sealed_through: int) -> ListedEntry:
    try:
        detail = json.loads(row[10])
    except ValueError:  # a damaged row is still listed; the verifier names the damage
        detail = {}
    subjects = {"ticket": row[5], "request_id": row[6], "grant": row[7], "saw": row[8], "resource": row[9]}
    return ListedEntry(seq=int(row[0]), recorded_at=row[1], action=str(row[2]), actor_type=str(row[3]),
                       actor_id=str(row[4]), subjects=subjects, detail=detail if isinstance(detail, dict) else {},
                       past_last_checkpoint=int(row[0]) > sealed_through)


async def list_entries(
    session: AsyncSession, *, where: EntryFilter, after: int = 0, before: int | None = None,
    limit: int = DEFAULT_PAGE,
) -> EntryPage:
    """Up to `limit` matching entries in chain order: the first ones above `after`, or, with `before`, the
    last ones between `after` and `before` (the page just older than `before`)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidEntryFilter(f"`limit` must be between 1 and {MAX_PAGE}.")
    # Read in the order the chain grows (checkpoint, entries, head): each statement sees its own snapshot,
    # and this order keeps what one page shows coherent (signed through <= listed entries <= head).
    checkpoint = await last_checkpoint(session)
    sealed_through = 0 if checkpoint is None else checkpoint.head_seq
    query = _filtered(select(*COLUMNS).where(ENTRIES.c.seq > after), where)
    if before is not None:
        query = query.where(ENTRIES.c.seq < before).order_by(ENTRIES.c.seq.desc())
    else:
        query = query.order_by(ENTRIES.c.seq)
    rows = list((await session.execute(query.limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    if before is not None:
        rows.reverse()
    entries = [_listed(row, sealed_through) for row in rows]
    head = await read_chain_head(session)
    # A full page has more beyond it in the direction read; the other direction has more if it was cut off.
    newer = more if before is None else before <= head.seq
    older = more if before is not None else after > 0
    next_after = entries[-1].seq if newer and entries else None
    prev_before = entries[0].seq if older and entries else None
    pending = (await pending_state(session)).count
    return EntryPage(entries=entries, head_seq=head.seq, sealed_through=sealed_through, pending=pending,
                     next_after=next_after, prev_before=prev_before)


async def newest_entries(session: AsyncSession, *, where: EntryFilter, limit: int = DEFAULT_PAGE) -> EntryPage:
    """The last `limit` matching entries, oldest first (`audit tail`, the console's first page)."""
    return await list_entries(session, where=where, before=MAX_SEQ, limit=limit)


def parse_moment(text: str, *, now: datetime) -> datetime:
    """A CLI time: `30m`/`2h`/`7d`/`45s` ago, a day (`2026-12-05`, 00:00 UTC) or an ISO 8601 time (UTC if no
    zone is given)."""
    text = text.strip()
    try:
        relative = _RELATIVE.match(text)
        if relative is not None:
            return now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except ValueError:
        raise InvalidEntryFilter(
            f"{text!r} is not a time: give 30m, 2h, 7d, a day (YYYY-MM-DD) or an ISO 8601 time.") from None
    except OverflowError:
        raise InvalidEntryFilter(f"{text!r} is out of range.") from None
