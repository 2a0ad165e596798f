"""Audit tables (C6). All append-only in the database (migration 0002_audit adds the triggers).

- `audit_entries`: the hash chain. `seq` is dense from 1; an insert must extend `audit_chain_head`.
- `audit_inbox`: entries committed with their change but not yet chained (PostgreSQL); a row may only be
  deleted once an entry with its `inbox_id` exists.
- `audit_chain_head`: one row, the newest (seq, hash); it moves forward one step per entry, never back.
- `audit_checkpoints`: Ed25519-signed heads, each naming the previous checkpoint's signature.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime

# SQLite makes `INTEGER PRIMARY KEY` the rowid (fast ordered scans); PostgreSQL gets 64-bit numbers.
SeqType = BigInteger().with_variant(Integer(), "sqlite")
HASH_LENGTH = 64
ID_LENGTH = 128
MAC_LENGTH = 86  # "hmac:" + 16 hex digits + ":" + 64 hex digits
NONCE_LENGTH = 32


class AuditEntryRow(Base):
    __tablename__ = "audit_entries"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=False)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    action: Mapped[str] = mapped_column(String(48))
    ticket_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    request_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    grant_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    saw_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    resource_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    detail: Mapped[str] = mapped_column(Text())  # canonical JSON, exactly the hashed text
    prev_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    entry_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    inbox_id: Mapped[int | None] = mapped_column(SeqType)  # bookkeeping, not hashed
    # Beside the hash, not in it (migration 0010): `hmac:<key id>:<hex>` over (seq, entry_hash), and the
    # writer's nonce of a queued entry (a replayed inbox row repeats one). A nonce is 32 lower-case hex digits
    # (migration 0011: a CHECK on PostgreSQL, a BEFORE INSERT trigger on SQLite).
    mac: Mapped[str | None] = mapped_column(String(MAC_LENGTH))
    nonce: Mapped[str | None] = mapped_column(String(NONCE_LENGTH))

    __table_args__ = (
        Index("ix_audit_entries_recorded_at", "recorded_at"),
        Index("ix_audit_entries_request_id", "request_id"),
        Index("ix_audit_entries_grant_id", "grant_id"),
        Index("ix_audit_entries_nonce", "nonce"),
        Index(
            "uq_audit_entries_inbox_id", "inbox_id", unique=True,
            postgresql_where=text("inbox_id IS NOT NULL"), sqlite_where=text("inbox_id IS NOT NULL"),
        ),
    )


class AuditInboxRow(Base):
    __tablename__ = "audit_inbox"

    id: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    action: Mapped[str] = mapped_column(String(48))
    ticket_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    request_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    grant_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    saw_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    resource_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    detail: Mapped[str] = mapped_column(Text())
    nonce: Mapped[str | None] = mapped_column(String(NONCE_LENGTH))  # 128 random bits, hex
    writer_mac: Mapped[str | None] = mapped_column(String(MAC_LENGTH))

    # SQLite must never reuse an inbox id: a chained entry's `inbox_id` would vouch for a new row.
    __table_args__ = ({"sqlite_autoincrement": True},)


class AuditChainHead(Base):
    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    entry_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class AuditCheckpointRow(Base):
    __tablename__ = "audit_checkpoints"

    number: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=False)
    head_seq: Mapped[int] = mapped_column(BigInteger)
    head_hash: Mapped[str] = mapped_column(String(HASH_LENGTH))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    key_id: Mapped[str] = mapped_column(String(64))
    prev_signature: Mapped[str] = mapped_column(String(128))  # base64, "" for the first checkpoint
    signature: Mapped[str] = mapped_column(String(128))  # base64 Ed25519
