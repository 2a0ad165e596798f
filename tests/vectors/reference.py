"""An independent, minimal reading of docs/FORMAT.md using only `cryptography` primitives.

It shares no code with app/vault: the vectors are made here, and app/vault must reproduce them byte for
byte. A third party can port these thirty lines to any language with HKDF-SHA256 and AES-256-GCM.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = 1


def name_bytes(region: str, request_id: str) -> bytes:
    r, q = region.encode(), request_id.encode()
    return bytes([len(r)]) + r + bytes([len(q)]) + q


def segment_key(dek: bytes, salt: bytes, region: str, request_id: str) -> bytes:
    info = bytes([VERSION]) + name_bytes(region, request_id)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(dek)


def nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", index) + bytes([last])


def aad(region: str, request_id: str, index: int, last: bool) -> bytes:
    return bytes([VERSION]) + name_bytes(region, request_id) + struct.pack(">I", index) + bytes([last])


def seal_segment(key: bytes, prefix: bytes, region: str, request_id: str, index: int, last: bool,
                 plaintext: bytes) -> bytes:
    sealed = AESGCM(key).encrypt(nonce(prefix, index, last), plaintext, aad(region, request_id, index, last))
    return struct.pack(">I", len(sealed) | (0x8000_0000 if last else 0)) + sealed


def data_key_context(region: str, request_id: str, bucket_hours: int) -> bytes:
    return bytes([VERSION]) + name_bytes(region, request_id) + struct.pack(">I", bucket_hours)
