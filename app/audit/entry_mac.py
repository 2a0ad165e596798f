"""Entry MACs (C6): every entry is bound to a key held outside the database, so SQL alone cannot append one.

- A writer (`append_entry`) queues an inbox row with a random 128-bit nonce and
  `writer_mac = HMAC(K, "voicelog/audit/inbox-mac/v1\\n" || content || nonce)`.
- The sequencer chains a queued row only as an authenticated entry when its writer MAC verifies and its nonce
  was never chained before (a copied row is a replay); every entry it chains (and every entry chained inline)
  carries `mac = HMAC(K, "voicelog/audit/entry-mac/v1\\n" || u64(seq) || entry_hash)`, bound to its position.
- The verifier, given the keys, reports an entry without a valid `mac` as `forged`.
- A nonce has one spelling, 32 lower-case hex digits (`canonical_nonce`): anything else is a bad MAC, so a copy
  with its nonce re-spelled is not a new nonce. A retired key may carry a last seq: its MACs (entry or writer)
  count only up to it, so rotating a leaked key ends its power to append.
Byte layout and a test vector: docs/AUDIT.md ("Entry MACs"). Keys: a setting (Key Vault secret) or a 0600
file beside the signing keys; the key id is `hmac:` + 16 hex digits of SHA-256(key).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.audit.canonical import ABSENT
from app.audit.settings import AuditSettings
from app.errors import AppError

INBOX_MAC_DOMAIN: Final = b"voicelog/audit/inbox-mac/v1\n"
ENTRY_MAC_DOMAIN: Final = b"voicelog/audit/entry-mac/v1\n"
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 16
KEY_ID_LENGTH: Final = 21  # "hmac:" + 16 hex digits
MAC_LENGTH: Final = KEY_ID_LENGTH + 1 + 64  # key id ":" 64 hex digits
KEY_FILE: Final = "entry-mac.key"
NONCE_TEXT: Final = re.compile(r"[0-9a-f]{32}")


class EntryMacKeyError(AppError):
    code = "audit_entry_mac_key_error"
    title = "The audit entry MAC key is not usable"


def mac_key_id(key: bytes) -> str:
    return "hmac:" + hashlib.sha256(key).hexdigest()[:16]


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def encode_content(
    recorded_at: str, actor_type: str, actor_id: str, action: str, ticket: str | None, request_id: str | None,
    grant: str | None, saw: str | None, resource: str | None, detail: str,
) -> bytes:
    """An entry's content as the entry hash encodes it, without seq and prev_hash (recorded_at is canonical)."""
    parts = [recorded_at, actor_type, actor_id, action]
    out = [_u32(len(raw)) + raw for raw in (p.encode() for p in parts)]
    for optional in (ticket, request_id, grant, saw, resource):
        out.append(ABSENT if optional is None else _u32(len(raw := optional.encode())) + raw)
    detail_raw = detail.encode()
    out.append(_u32(len(detail_raw)) + detail_raw)
    return b"".join(out)


def canonical_nonce(text: object) -> bytes | None:
    """A nonce's 16 bytes when `text` is its one spelling (32 lower-case hex digits), else None."""
    if not isinstance(text, str) or not NONCE_TEXT.fullmatch(text):
        return None
    return bytes.fromhex(text)


@dataclass(frozen=True)
class EntryMacKeys:
    """The key that MACs new entries and every key whose MACs are accepted (current and retired), by id;
    `last_seq` bounds a retired key: its MACs count only at seqs up to it."""

    current_id: str
    keys: Mapping[str, bytes]
    last_seq: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, current: bytes, retired: Iterable[bytes | tuple[bytes, int | None]] = ()) -> EntryMacKeys:
        """`retired`: keys, or (key, last seq or None for any seq)."""
        bounded = [(k, None) if isinstance(k, bytes) else k for k in retired]
        for key in (current, *(k for k, _ in bounded)):
            if len(key) != KEY_BYTES:
                raise EntryMacKeyError(f"an entry MAC key is {KEY_BYTES} bytes")
        keys = {mac_key_id(k): k for k, _ in bounded}
        last = {mac_key_id(k): n for k, n in bounded if n is not None}
        keys[mac_key_id(current)] = current
        last.pop(mac_key_id(current), None)  # the current key MACs every new entry
        return cls(mac_key_id(current), keys, last)

    def _tag(self, key_id: str, message: bytes) -> str:
        return f"{key_id}:{hmac.digest(self.keys[key_id], message, 'sha256').hex()}"

    def inbox_mac(self, content: bytes, nonce: bytes) -> str:
        return self._tag(self.current_id, INBOX_MAC_DOMAIN + content + nonce)

    def entry_mac(self, seq: int, entry_hash: str) -> str:
        return self._tag(self.current_id, ENTRY_MAC_DOMAIN + seq.to_bytes(8, "big") + bytes.fromhex(entry_hash))

    def _verified_by(self, mac: str | None, message: bytes, seq: int | None) -> str | None:
        """The id of the key `mac` verifies under, if it may MAC at `seq` (None: a bounded key may not)."""
        if mac is None or len(mac) != MAC_LENGTH or mac[KEY_ID_LENGTH] != ":":
            return None
        key_id = mac[:KEY_ID_LENGTH]
        key = self.keys.get(key_id)
        if key is None:
            return None
        last = self.last_seq.get(key_id)
        if last is not None and (seq is None or seq > last):
            return None
        if not hmac.compare_digest(mac[KEY_ID_LENGTH + 1:], hmac.digest(key, message, "sha256").hex()):
            return None
        return key_id

    def check_inbox_mac(self, mac: str | None, content: bytes, nonce: bytes, seq: int | None = None) -> bool:
        """`seq`: where the row would be chained (a retired key with a last seq is refused past it, or
        without a position)."""
        return self._verified_by(mac, INBOX_MAC_DOMAIN + content + nonce, seq) is not None

    def entry_mac_key(self, mac: str | None, seq: int, entry_hash: str) -> str | None:
        """The id of the key that MAC'd entry `seq`, or None if `mac` is not valid there."""
        return self._verified_by(mac, ENTRY_MAC_DOMAIN + seq.to_bytes(8, "big") + bytes.fromhex(entry_hash), seq)

    def check_entry_mac(self, mac: str | None, seq: int, entry_hash: str) -> bool:
        return self.entry_mac_key(mac, seq, entry_hash) is not None


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def _decode_key(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EntryMacKeyError(f"{what} is not base64") from exc
    if len(raw) != KEY_BYTES:
        raise EntryMacKeyError(f"{what} must be {KEY_BYTES} bytes")
    return raw


def _read_key_file(path: Path) -> bytes:
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EntryMacKeyError(f"{path.name} is readable by others; it must be mode 0600")
    return _decode_key(path.read_text(), path.name)


def _create_key_file(path: Path) -> bytes:
    """Create the key file once (O_EXCL: concurrent processes agree on the first one written)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(KEY_BYTES)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(key).decode() + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    try:
        os.link(tmp, path)  # fails if another process made it first: theirs wins
    except FileExistsError:
        return _read_key_file(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return key


def build_entry_mac_keys(settings: AuditSettings, data_dir: Path, *, create: bool = True) -> EntryMacKeys | None:
    """The keys the settings name: the configured key, else `<key dir>/entry-mac.key` (made if `create`)."""
    retired = [(_decode_key(k.key.get_secret_value(), "retired_entry_mac_keys"), k.last_seq)
               for k in settings.retired_entry_mac_keys]
    if settings.entry_mac_key is not None:
        return EntryMacKeys.of(_decode_key(settings.entry_mac_key.get_secret_value(), "entry_mac_key"), retired)
    path = settings.key_dir(data_dir) / KEY_FILE
    try:
        current = _read_key_file(path)
    except FileNotFoundError:
        if not create:
            return None
        current = _create_key_file(path)
    return EntryMacKeys.of(current, retired)


# Which keys an appending session uses: the ones its session factory carries in `info` (build_context binds
# the runtime's keys to every factory it makes; a test binds its own). A session without them writes entries
# unauthenticated, which verify as forged. No process-wide default: every key in use was passed down.
ENTRY_MAC_INFO: Final = "voicelog.audit.entry_mac_keys"


def entry_mac_info(keys: EntryMacKeys | None) -> dict[str, EntryMacKeys | None]:
    """The `info` of a session (or `sessionmaker(info=...)`) whose appends are MAC'd with `keys`."""
    return {ENTRY_MAC_INFO: keys}


def bind_entry_mac(
    factory: async_sessionmaker[AsyncSession], keys: EntryMacKeys | None,
) -> async_sessionmaker[AsyncSession]:
    """`factory`, its sessions now appending with `keys` (the audit runtime's)."""
    factory.configure(info=entry_mac_info(keys))
    return factory


def entry_mac_for(session: AsyncSession) -> EntryMacKeys | None:
    keys = session.info.get(ENTRY_MAC_INFO)
    return keys if isinstance(keys, EntryMacKeys) else None
