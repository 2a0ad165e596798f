"""What an attacker with database superuser rights does to the audit table, each a single act.

Every function assumes the triggers are already bypassed (`disable_audit_triggers`). Seq shifts go
through negative numbers because the primary key is checked row by row.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from typing import Any

from sqlalchemy import delete as sql_delete
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.canonical import encode_entry
from app.audit.checkpoints import CHECKPOINTS
from app.audit.service import ENTRIES, HEAD

COLUMNS = ("seq", "recorded_at", "actor_type", "actor_id", "action", "ticket_id", "request_id", "grant_id",
           "saw_id", "resource_id", "detail", "prev_hash", "entry_hash")


async def entry(session: AsyncSession, seq: int) -> dict[str, Any]:
    row = (await session.execute(select(ENTRIES).where(ENTRIES.c.seq == seq))).mappings().one()
    return {c: row[c] for c in COLUMNS}


async def count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(ENTRIES))).scalar_one())


async def edit(session: AsyncSession, seq: int, column: str, value: Any) -> None:
    await session.execute(update(ENTRIES).where(ENTRIES.c.seq == seq).values({column: value}))


async def edit_time(session: AsyncSession, seq: int, delta: timedelta) -> None:
    await edit(session, seq, "recorded_at", (await entry(session, seq))["recorded_at"] + delta)


async def _shift(session: AsyncSession, from_seq: int, delta: int) -> None:
    await session.execute(update(ENTRIES).where(ENTRIES.c.seq >= from_seq).values(seq=-(ENTRIES.c.seq + delta)))
    await session.execute(update(ENTRIES).where(ENTRIES.c.seq < 0).values(seq=-ENTRIES.c.seq))


async def delete(session: AsyncSession, seq: int, *, renumber: bool = False) -> None:
    await session.execute(sql_delete(ENTRIES).where(ENTRIES.c.seq == seq))
    if renumber:
        await _shift(session, seq + 1, -1)


def hash_of(row: dict[str, Any]) -> str:
    return hashlib.sha256(encode_entry(*(row[c] for c in COLUMNS[:12]))).hexdigest()


async def insert_forged(session: AsyncSession, seq: int, *, valid_hash: bool) -> None:
    """Make room at `seq` and put a forged entry there (with a correct hash and link, or junk)."""
    template = await entry(session, seq)
    await _shift(session, seq, +1)
    previous = await entry(session, seq - 1) if seq > 1 else None
    forged = dict(template, seq=seq, actor_id="mallory", prev_hash=previous["entry_hash"] if previous else "0" * 64)
    forged["entry_hash"] = hash_of(forged) if valid_hash else "f" * 64
    await session.execute(insert(ENTRIES).values(forged))


async def swap(session: AsyncSession, first: int, second: int) -> None:
    await session.execute(update(ENTRIES).where(ENTRIES.c.seq == first).values(seq=-1))
    await session.execute(update(ENTRIES).where(ENTRIES.c.seq == second).values(seq=first))
    await session.execute(update(ENTRIES).where(ENTRIES.c.seq == -1).values(seq=second))


async def truncate(session: AsyncSession, keep: int, *, rewind_head: bool = False,
                   drop_checkpoints: bool = False) -> None:
    """Delete every entry after `keep`; optionally cover the tracks in the head row and the checkpoints."""
    await session.execute(sql_delete(ENTRIES).where(ENTRIES.c.seq > keep))
    if rewind_head:
        last = await entry(session, keep)
        await session.execute(update(HEAD).where(HEAD.c.id == 1).values(seq=keep, entry_hash=last["entry_hash"]))
    if drop_checkpoints:
        await session.execute(sql_delete(CHECKPOINTS).where(CHECKPOINTS.c.head_seq > keep))


async def rewrite(session: AsyncSession, seq: int) -> None:
    """Edit one entry and recompute every hash after it, as a careful attacker would; the head row too."""
    last = await count(session)
    prev_hash: str | None = None
    for current in range(seq, last + 1):
        row = await entry(session, current)
        if current == seq:
            row["actor_id"] = "mallory"
        if prev_hash is not None:
            row["prev_hash"] = prev_hash
        row["entry_hash"] = hash_of(row)
        await session.execute(update(ENTRIES).where(ENTRIES.c.seq == current).values(row))
        prev_hash = row["entry_hash"]
    await session.execute(update(HEAD).where(HEAD.c.id == 1).values(entry_hash=prev_hash))
