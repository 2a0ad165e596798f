"""Signed checkpoints (C6): every N entries or S seconds the head is signed and copied outside the database.

A checkpoint signs (number, head seq, head hash, time, key id, previous checkpoint's signature) with
Ed25519. It is stored in `audit_checkpoints` and exported to a write-once sink (an append-only file here;
or Azure append blobs, app/audit/blob_sink.py), so deleting the chain's tail, or the checkpoints that
cover it, leaves the exported copy pointing past the end.
"""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, AuditAction, detail_time, parse_detail_time
from app.audit.canonical import canonical_time, checkpoint_message
from app.audit.entry_mac import EntryMacKeys, entry_mac_for
from app.audit.keys import Keyring, PublicKeyInfo
from app.audit.models import AuditCheckpointRow
from app.audit.service import INBOX, ChainHead, append_locked, integrate_locked, lock_chain_head, read_chain_head
from app.clock import Clock
from app.errors import AppError

CHECKPOINTS: Final = cast(Table, AuditCheckpointRow.__table__)
TAIL_BYTES: Final = 8192  # a checkpoint line is ~400 bytes: the last one is in the file's last 8 KiB
KEEPER: Final = Actor.system("audit-keeper")


class CheckpointExportError(AppError):
    code = "audit_checkpoint_export_failed"
    title = "A checkpoint could not be exported"


@dataclass(frozen=True)
class Checkpoint:
    number: int
    head_seq: int
    head_hash: str
    signed_at: datetime
    key_id: str
    prev_signature: bytes
    signature: bytes

    def message(self) -> bytes:
        return checkpoint_message(
            number=self.number, head_seq=self.head_seq, head_hash=self.head_hash, signed_at=self.signed_at,
            key_id=self.key_id, prev_signature=self.prev_signature,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "v": 1,
            "number": self.number,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "signed_at": canonical_time(self.signed_at),
            "key_id": self.key_id,
            "prev_signature": base64.b64encode(self.prev_signature).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            number=int(data["number"]),
            head_seq=int(data["head_seq"]),
            head_hash=str(data["head_hash"]),
            signed_at=parse_detail_time(str(data["signed_at"])),
            key_id=str(data["key_id"]),
            prev_signature=base64.b64decode(str(data["prev_signature"]), validate=True),
            signature=base64.b64decode(str(data["signature"]), validate=True),
        )

    @classmethod
    def from_row(cls, row: Any) -> Checkpoint:
        return cls(
            number=int(row.number), head_seq=int(row.head_seq), head_hash=str(row.head_hash),
            signed_at=row.signed_at, key_id=str(row.key_id),
            prev_signature=base64.b64decode(row.prev_signature), signature=base64.b64decode(row.signature),
        )


class CheckpointSink(Protocol):
    """A write-once place outside the database. Appends must be durable when `append` returns.

    `FileCheckpointSink` (append-only file) and `AzureBlobCheckpointSink` (append blobs, one `append_block`
    per line under the append-position condition, in an immutable container) implement it.
    """

    async def append(self, checkpoints: Sequence[Checkpoint]) -> int:
        """Append those not yet present (numbers above the sink's last); returns how many were written."""
        ...

    async def last_number(self) -> int:
        """The newest checkpoint number held (0 if none), without reading everything."""
        ...

    async def read_all(self) -> list[Checkpoint]:
        ...

    async def close(self) -> None:
        ...


class FileCheckpointSink:
    """JSON lines in an append-only file (O_APPEND, fsync, flock across processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read_locked(self, fd: int) -> list[Checkpoint]:
        with open(fd, encoding="utf-8", closefd=False) as handle:
            handle.seek(0)
            text = handle.read()
        lines = text.split("\n")
        # A line without its newline is a write torn by a crash: ignored, and overwritten by nothing.
        complete = lines[:-1]
        return [Checkpoint.from_json(json.loads(line)) for line in complete if line.strip()]

    def _append_sync(self, checkpoints: Sequence[Checkpoint]) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            present = self._read_locked(fd)
            last = present[-1].number if present else 0
            fresh = [c for c in sorted(checkpoints, key=lambda c: c.number) if c.number > last]
            if fresh:
                payload = "".join(json.dumps(c.to_json(), sort_keys=True) + "\n" for c in fresh)
                os.write(fd, payload.encode())
                os.fsync(fd)
            return len(fresh)
        finally:
            os.close(fd)

    def _last_sync(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            size = os.fstat(fd).st_size
            start = max(0, size - TAIL_BYTES)
            tail = os.pread(fd, size - start, start).decode("utf-8", errors="replace")
        finally:
            os.close(fd)
        lines = tail.split("\n")[:-1]  # the last piece is torn or empty
        if start > 0:
            lines = lines[1:]  # the first piece may be cut
        complete = [line for line in lines if line.strip()]
        if not complete:
            return 0 if start == 0 else max((c.number for c in self._read_sync()), default=0)
        return int(json.loads(complete[-1])["number"])

    def _read_sync(self) -> list[Checkpoint]:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return []
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            return self._read_locked(fd)
        finally:
            os.close(fd)

    async def append(self, checkpoints: Sequence[Checkpoint]) -> int:
        try:
            return await asyncio.to_thread(self._append_sync, checkpoints)
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointExportError(f"cannot append to {self.path}: {exc}") from exc

    async def read_all(self) -> list[Checkpoint]:
        try:
            return await asyncio.to_thread(self._read_sync)
        except (ValueError, KeyError) as exc:
            raise CheckpointExportError(f"{self.path} is not a checkpoint export: {exc}") from exc

    async def last_number(self) -> int:
        try:
            return await asyncio.to_thread(self._last_sync)
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointExportError(f"cannot read {self.path}: {exc}") from exc

    async def close(self) -> None:
        return None


@dataclass(frozen=True)
class CheckpointPolicy:
    """Sign when entries follow the last checkpoint and either `every_entries` of them or `every` passed.

    Only entries after the last checkpoint count, and a checkpoint signs the head including its own
    `checkpoint.signed` entry, so the keeper's entries never make another checkpoint due: idle, nothing is signed.
    """

    every_entries: int = 1000
    every: timedelta = timedelta(seconds=5)

    def due(self, head: ChainHead, last: Checkpoint | None, now: datetime) -> bool:
        if last is None:
            return head.seq > 0
        if head.seq <= last.head_seq:
            return False
        return head.seq - last.head_seq >= self.every_entries or now - last.signed_at >= self.every

    def due_at(self, head: ChainHead, last: Checkpoint | None) -> datetime | None:
        """When a checkpoint falls due by time (None: nothing unsealed; it may come earlier by count)."""
        if last is None:
            return datetime.min.replace(tzinfo=UTC) if head.seq > 0 else None
        return last.signed_at + self.every if head.seq > last.head_seq else None


async def list_checkpoints(session: AsyncSession, *, after: int = 0, limit: int | None = None) -> list[Checkpoint]:
    query = select(CHECKPOINTS).where(CHECKPOINTS.c.number > after).order_by(CHECKPOINTS.c.number)
    result = await session.execute(query if limit is None else query.limit(limit))
    return [Checkpoint.from_row(row) for row in result]


async def last_checkpoint(session: AsyncSession) -> Checkpoint | None:
    result = await session.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.number.desc()).limit(1))
    row = result.one_or_none()
    return None if row is None else Checkpoint.from_row(row)


@dataclass(frozen=True)
class SealResult:
    chained: int
    checkpoint: Checkpoint | None
    rotated_to: PublicKeyInfo | None = None
    skipped: bool = False  # another replica held the chain lock
    next_due: datetime | None = None  # when a checkpoint falls due by time for entries still unsealed
    rejected: Mapping[str, int] = field(default_factory=dict)  # queued rows chained without a MAC, by reason


async def seal(
    *,
    session: AsyncSession,
    clock: Clock,
    keyring: Keyring,
    policy: CheckpointPolicy,
    batch: int = 2000,
    force: bool = False,
    wait: bool = False,
    mac: EntryMacKeys | None = None,
) -> SealResult:
    """The chain keeper's step, in the caller's transaction: chain queued entries, sign a checkpoint if due.

    The due check happens under the chain lock, so replicas never sign the same head twice. `mac`: the
    entry MAC keys (default: the session's).
    """
    if not force:
        work, next_due = await _work_to_do(session, policy, clock.now())
        if not work:
            return SealResult(chained=0, checkpoint=None, next_due=next_due)  # no lock: idle rounds cost reads
    head = await lock_chain_head(session, wait=wait)
    if head is None:
        return SealResult(chained=0, checkpoint=None, skipped=True)
    mac = mac or entry_mac_for(session)
    integrated = await integrate_locked(session, head, limit=batch, mac=mac)
    chained, head = integrated.count, integrated.head
    now = clock.now()
    last = await last_checkpoint(session)
    if not (force and head.seq > (last.head_seq if last else 0)) and not policy.due(head, last, now):
        return SealResult(chained=chained, checkpoint=None, next_due=policy.due_at(head, last),
                          rejected=integrated.rejected)
    rotated = keyring.rotate_if_due(now)
    key = keyring.signing_key(now)
    if last is None or last.key_id != key.key_id:
        # The chain itself records every key that signs it, with the key's public half.
        _, head = await append_locked(
            session, head, recorded_at=now, actor=KEEPER, action=AuditAction.SIGNING_KEY_ROTATED,
            detail={"key_id": key.key_id, "public_key": base64.b64encode(key.public_info.public_key).decode(),
                    "not_before": detail_time(key.not_before)}, mac=mac,
        )
    number = (last.number if last else 0) + 1
    _, head = await append_locked(
        session, head, recorded_at=now, actor=KEEPER, action=AuditAction.CHECKPOINT_SIGNED,
        detail={"checkpoint": number, "key_id": key.key_id}, mac=mac,
    )
    prev_signature = last.signature if last else b""
    message = checkpoint_message(number=number, head_seq=head.seq, head_hash=head.entry_hash, signed_at=now,
                                 key_id=key.key_id, prev_signature=prev_signature)
    checkpoint = Checkpoint(number, head.seq, head.entry_hash, now, key.key_id, prev_signature, key.sign(message))
    await session.execute(insert(CHECKPOINTS).values(
        number=checkpoint.number, head_seq=checkpoint.head_seq, head_hash=checkpoint.head_hash,
        signed_at=checkpoint.signed_at, key_id=checkpoint.key_id,
        prev_signature=base64.b64encode(prev_signature).decode(),
        signature=base64.b64encode(checkpoint.signature).decode(),
    ))
    return SealResult(chained=chained, checkpoint=checkpoint, rotated_to=rotated, rejected=integrated.rejected)


async def _work_to_do(session: AsyncSession, policy: CheckpointPolicy, now: datetime) -> tuple[bool, datetime | None]:
    queued = (await session.execute(select(INBOX.c.id).limit(1))).first() is not None
    head, last = await read_chain_head(session), await last_checkpoint(session)
    return queued or policy.due(head, last, now), policy.due_at(head, last)


async def export_checkpoints(*, session: AsyncSession, sink: CheckpointSink) -> int:
    """Copy committed checkpoints the sink does not hold yet; safe to repeat and to run on every replica."""
    fresh = await list_checkpoints(session, after=await sink.last_number())
    return await sink.append(fresh) if fresh else 0
