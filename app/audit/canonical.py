"""The byte-exact encodings the audit trail hashes and signs (docs/AUDIT.md, "Canonical encoding").

Entry hash:  SHA-256( "voicelog/audit/entry/v1\\n" || u64(seq) || F(recorded_at) || F(actor_type) || F(actor_id)
                      || F(action) || O(ticket) || O(request_id) || O(grant) || O(saw) || O(resource)
                      || F(detail) || prev_hash[32] )
where u64/u32 are big-endian, F(s) = u32(len(utf8(s))) || utf8(s), O(None) = FF FF FF FF, O(s) = F(s).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from app.audit.actions import InvalidAuditEntry, JSONValue

ENTRY_DOMAIN: Final = b"voicelog/audit/entry/v1\n"
CHECKPOINT_DOMAIN: Final = b"voicelog/audit/checkpoint/v1\n"
REPORT_DOMAIN: Final = b"voicelog/audit/report/v1\n"
GENESIS_HASH: Final = "0" * 64
ABSENT: Final = b"\xff\xff\xff\xff"


def _check_json(value: object, depth: int = 0) -> None:
    if depth > 8:
        raise InvalidAuditEntry("JSON nested too deeply")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if abs(value) > 2**53 - 1:
            raise InvalidAuditEntry("integers must fit in 53 bits")
        return
    if isinstance(value, list | tuple):
        for item in value:
            _check_json(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidAuditEntry("JSON object keys must be strings")
            _check_json(item, depth + 1)
        return
    raise InvalidAuditEntry(f"{type(value).__name__} is not allowed in canonical JSON (no floats)")


def canonical_json(value: JSONValue | Mapping[str, JSONValue]) -> str:
    """Sorted keys, no whitespace, ASCII only (\\uXXXX escapes), no floats: one text per value."""
    _check_json(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def canonical_time(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC, always six fractional digits."""
    text = moment.isoformat(timespec="microseconds")
    if text.endswith("+00:00"):
        return text[:-6] + "Z"
    if moment.tzinfo is None:
        raise ValueError("naive datetime in the audit trail")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


_U32 = struct.Struct(">I").pack


def _field(text: str) -> bytes:
    raw = text.encode()
    return _U32(len(raw)) + raw


@dataclass(frozen=True, slots=True)
class EntryFields:
    """Exactly what an entry's hash covers."""

    seq: int
    recorded_at: datetime
    actor_type: str
    actor_id: str
    action: str
    ticket: str | None
    request_id: str | None
    grant: str | None
    saw: str | None
    resource: str | None
    detail: str  # canonical JSON text, "{}" when empty
    prev_hash: str  # hex


def encode_entry(
    seq: int, recorded_at: datetime, actor_type: str, actor_id: str, action: str,
    ticket: str | None, request_id: str | None, grant: str | None, saw: str | None, resource: str | None,
    detail: str, prev_hash: str,
) -> bytes:
    """The canonical bytes of one entry."""
    return encode_entry_text(seq, canonical_time(recorded_at), actor_type, actor_id, action, ticket, request_id,
                             grant, saw, resource, detail, prev_hash)


def encode_entry_text(
    seq: int, recorded_at: str, actor_type: str, actor_id: str, action: str,
    ticket: str | None, request_id: str | None, grant: str | None, saw: str | None, resource: str | None,
    detail: str, prev_hash: str,
) -> bytes:
    """`encode_entry` with the time already in canonical text; positional and inlined: the verifier's loop."""
    time_raw, type_raw, id_raw = recorded_at.encode(), actor_type.encode(), actor_id.encode()
    action_raw, detail_raw = action.encode(), detail.encode()
    u32 = _U32
    return b"".join((
        ENTRY_DOMAIN, seq.to_bytes(8, "big"),
        u32(len(time_raw)), time_raw,
        u32(len(type_raw)), type_raw,
        u32(len(id_raw)), id_raw,
        u32(len(action_raw)), action_raw,
        ABSENT if ticket is None else u32(len(raw := ticket.encode())) + raw,
        ABSENT if request_id is None else u32(len(raw := request_id.encode())) + raw,
        ABSENT if grant is None else u32(len(raw := grant.encode())) + raw,
        ABSENT if saw is None else u32(len(raw := saw.encode())) + raw,
        ABSENT if resource is None else u32(len(raw := resource.encode())) + raw,
        u32(len(detail_raw)), detail_raw,
        bytes.fromhex(prev_hash),
    ))


def entry_hash(fields: EntryFields) -> str:
    return hashlib.sha256(encode_entry(
        fields.seq, fields.recorded_at, fields.actor_type, fields.actor_id, fields.action, fields.ticket,
        fields.request_id, fields.grant, fields.saw, fields.resource, fields.detail, fields.prev_hash,
    )).hexdigest()


def checkpoint_message(
    *, number: int, head_seq: int, head_hash: str, signed_at: datetime, key_id: str, prev_signature: bytes
) -> bytes:
    """What a checkpoint's Ed25519 signature covers."""
    return b"".join((
        CHECKPOINT_DOMAIN,
        number.to_bytes(8, "big"),
        head_seq.to_bytes(8, "big"),
        bytes.fromhex(head_hash),
        _field(canonical_time(signed_at)),
        _field(key_id),
        len(prev_signature).to_bytes(4, "big") + prev_signature,
    ))


def report_message(envelope: Mapping[str, JSONValue]) -> bytes:
    """What a report's signature covers: the domain tag and the canonical JSON of its envelope."""
    return REPORT_DOMAIN + canonical_json(envelope).encode()
