"""Regenerate the JSON test vectors from tests/vectors/reference.py (run by hand; never by the suite).

    .venv/bin/python -m tests.vectors.make_vectors
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.vectors import reference as ref

HERE = Path(__file__).parent


def stream_vector(name: str, plaintexts: list[bytes], *, final: bool, dek: bytes, salt: bytes, prefix: bytes,
                  region: str, request_id: str, note: str) -> dict[str, Any]:
    key = ref.segment_key(dek, salt, region, request_id)
    header = bytes([ref.VERSION]) + salt + prefix
    segments, stream = [], header
    for index, plaintext in enumerate(plaintexts):
        last = final and index == len(plaintexts) - 1
        sealed = ref.seal_segment(key, prefix, region, request_id, index, last, plaintext)
        segments.append({"index": index, "last": last, "plaintext": plaintext.hex(),
                         "nonce": ref.nonce(prefix, index, last).hex(),
                         "aad": ref.aad(region, request_id, index, last).hex(), "segment": sealed.hex()})
        stream += sealed
    return {"name": name, "note": note, "dek": dek.hex(), "salt": salt.hex(), "nonce_prefix": prefix.hex(),
            "region": region, "request_id": request_id,
            "hkdf_info": (bytes([ref.VERSION]) + ref.name_bytes(region, request_id)).hex(),
            "segment_key": key.hex(), "header": header.hex(), "segments": segments, "complete": final,
            "stream": stream.hex()}


def main() -> None:
    dek = bytes(range(32))
    salt = bytes(range(0x40, 0x60))
    prefix = bytes.fromhex("a0a1a2a3a4a5a6")
    streams = [
        stream_vector("three-segments", [b"caller: hello", b"", b"assistant: hi there"], final=True, dek=dek,
                      salt=salt, prefix=prefix, region="eastus", request_id="Xq3vN0b1T2r5aUeZkJmP8w",
                      note="a complete stream: the last segment carries the final flag"),
        stream_vector("empty-final", [b""], final=True, dek=bytes(32), salt=bytes(32), prefix=bytes(7),
                      region="westeurope", request_id="r", note="the smallest complete stream (60 bytes)"),
        stream_vector("truncated", [b"\x00\x01" * 8, b"\xff" * 5], final=False, dek=dek, salt=salt, prefix=prefix,
                      region="eastus", request_id="Xq3vN0b1T2r5aUeZkJmP8w",
                      note="no final segment: opens as truncated with both segments"),
    ]
    kek = bytes(range(0x80, 0xA0))
    nonce = bytes.fromhex("000102030405060708090a0b")
    hours = 483_778  # 2025-03-10T10:00Z
    context = ref.data_key_context("eastus", "Xq3vN0b1T2r5aUeZkJmP8w", hours)
    provider_blob = bytes([0x01]) + nonce + AESGCM(kek).encrypt(nonce, dek, context)
    wrapped = {
        "name": "local-keyring", "note": "a DEK wrapped by a LocalKeyring KEK (scheme 0x01)",
        "kek": kek.hex(), "dek": dek.hex(), "region": "eastus", "request_id": "Xq3vN0b1T2r5aUeZkJmP8w",
        "bucket_hour": "2025-03-10T10:00:00+00:00", "bucket_hours": hours, "context": context.hex(),
        "nonce": nonce.hex(), "provider_blob": provider_blob.hex(),
        "wrapped_key": (bytes([1]) + hours.to_bytes(4, "big") + provider_blob).hex(),
    }
    body = {"format": "voicelog vault v1 (docs/FORMAT.md)", "streams": streams, "wrapped_keys": [wrapped]}
    (HERE / "vault_v1.json").write_text(json.dumps(body, indent=2) + "\n")


if __name__ == "__main__":
    main()
