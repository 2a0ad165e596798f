"""RFC 6455 on the wire, for the direct data plane: frame headers, masks, close payloads, handshake keys.

Only what a relay needs: no extensions (permessage-deflate is never negotiated, so RSV bits are an error),
payloads unmasked and re-masked by `websockets`' C `apply_mask`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

from websockets.speedups import apply_mask

__all__ = [
    "CLOSE",
    "CONTINUATION",
    "PING",
    "PONG",
    "accept_key",
    "apply_mask",
    "close_payload",
    "frame",
    "mask_key",
    "masked_frame",
    "parse_close",
    "valid_client_key",
]

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_U16 = struct.Struct("!BBH")
_U64 = struct.Struct("!BBQ")

# Close codes a peer may send (RFC 6455 7.4.1 and 7.4.2; 1004-1006 and 1015 never go on the wire).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class ProtocolError(Exception):
    """The peer broke RFC 6455; `code` is the close code it gets (1002, 1007 or 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _header(first: int, length: int, mask_bit: int) -> bytes:
    if length < 126:
        return bytes((first, mask_bit | length))
    if length < 65536:
        return _U16.pack(first, mask_bit | 126, length)
    return _U64.pack(first, mask_bit | 127, length)


def frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """An unmasked frame (server to client)."""
    return _header((0x80 if fin else 0) | opcode, len(payload), 0) + payload


_POOL_BYTES = 4096
_pool = b""
_pool_at = _POOL_BYTES


def mask_key() -> bytes:
    """4 bytes from the OS's CSPRNG, read 4 KiB at a time: one system call per 1,024 frames, not per frame."""
    global _pool, _pool_at  # one pool per process, used on the event loop thread only
    at = _pool_at
    if at >= _POOL_BYTES:
        _pool, at = os.urandom(_POOL_BYTES), 0
    _pool_at = at + 4
    return _pool[at:at + 4]


def masked_frame(opcode: int, payload: bytes) -> bytes:
    """A masked frame (client to server) under a fresh random key."""
    key = mask_key()
    return _header(0x80 | opcode, len(payload), 0x80) + key + apply_mask(payload, key)


def close_payload(code: int, reason: str) -> bytes:
    """The body of a close frame; 1005 (no status) is an empty body. Reasons are cut to fit 123 bytes."""
    if code == 1005:
        return b""
    encoded = reason.encode("utf-8")
    if len(encoded) > 123:
        encoded = encoded[:123].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + encoded


def parse_close(payload: bytes) -> tuple[int, str]:
    """Code and reason of a received close frame; an empty one is 1005. Raises ProtocolError."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolError(1002, "close frame too short")
    code = int.from_bytes(payload[:2], "big")
    if code not in _SENDABLE and not 3000 <= code <= 4999:
        raise ProtocolError(1002, "invalid close code")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(1007, "invalid UTF-8 in close reason") from exc
    return code, reason


def accept_key(client_key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(client_key.encode("ascii") + _GUID).digest()).decode("ascii")  # noqa: S324 - RFC 6455


def valid_client_key(value: str) -> bool:
    """A Sec-WebSocket-Key is the base64 of 16 bytes."""
    try:
        return len(base64.b64decode(value.encode("ascii"), validate=True)) == 16
    except (ValueError, UnicodeEncodeError):
        return False
