"""What a console session keeps secret, readable only by the request that carries its cookie.

The row key is SHA-256 of the session id and the sealed state is AES-256-GCM under HKDF-SHA256(session id),
with the kind and row key as associated data: a reader of the database can neither replay a cookie nor
decrypt a row, and a row copied under another key or kind does not open. The CSRF token is derived
(HMAC-SHA256 of the id), so it is stored nowhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

FORMAT = b"\x01"
NONCE_BYTES = 12
_KEY_INFO = b"voicelog console session key v1"
_LOGIN_INFO = b"voicelog console login cookie v1"
_AAD_PREFIX = b"voicelog console session v1\x00"


def row_key(session_id: str) -> bytes:
    """The database key of a session: SHA-256 of its id, so the stored key cannot be sent as a cookie."""
    return hashlib.sha256(session_id.encode("utf-8")).digest()


def _cipher(session_id: str, server_key: bytes | None) -> AESGCM:
    """Keyed by the id alone (a session's row: only the cookie's holder opens it), or by the id and the
    replicas' key too (a login cookie: only a replica mints or opens it, `app/console/login_key.py`)."""
    info = _KEY_INFO if server_key is None else _LOGIN_INFO
    key = HKDF(algorithm=SHA256(), length=32, salt=server_key, info=info).derive(session_id.encode("utf-8"))
    return AESGCM(key)


def _associated(kind: str, key: bytes) -> bytes:
    return _AAD_PREFIX + kind.encode("ascii") + b"\x00" + key


def seal_state(session_id: str, kind: str, plaintext: bytes, *, server_key: bytes | None = None) -> bytes:
    """format byte | random 96-bit nonce | AES-GCM ciphertext and tag (a fresh nonce on every save)."""
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT + nonce + _cipher(session_id, server_key).encrypt(nonce, plaintext,
                                                                     _associated(kind, row_key(session_id)))


def open_state(session_id: str, kind: str, sealed: bytes, *, server_key: bytes | None = None) -> bytes | None:
    """The plaintext, or None when the id, kind, row key or server key does not match or the bytes were
    altered."""
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != FORMAT:
        return None
    nonce, ciphertext = sealed[1:1 + NONCE_BYTES], sealed[1 + NONCE_BYTES:]
    try:
        return _cipher(session_id, server_key).decrypt(nonce, ciphertext, _associated(kind, row_key(session_id)))
    except InvalidTag:
        return None


def csrf_token(session_id: str) -> str:
    """The session's CSRF token: HMAC-SHA256(session id, "csrf"), base64url; a new id gives a new token."""
    mac = hmac.new(session_id.encode("utf-8"), b"csrf", hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def csrf_matches(session_id: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode("utf-8"), csrf_token(session_id).encode())
