"""The published test vectors (tests/vectors/vault_v1.json): app/vault reproduces them byte for byte, and
the independent reference in tests/vectors/reference.py (what FORMAT.md tells a third party) agrees."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.clock import ManualClock
from app.vault.datakey import DataKey
from app.vault.envelope import WrappedKey, data_key_context, unwrap_data_key
from app.vault.errors import IntegrityError
from app.vault.keyring import KeyBucket
from app.vault.local import LocalKeyring
from app.vault.segments import SegmentWriter, open_stream
from tests.fixtures.keys import KEY_LIFETIME
from tests.vectors import reference as ref

VECTORS = json.loads((Path(__file__).parents[1] / "vectors" / "vault_v1.json").read_text())
STREAMS = {v["name"]: v for v in VECTORS["streams"]}
WRAPPED = {v["name"]: v for v in VECTORS["wrapped_keys"]}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_writer_reproduces_the_stream_vector(name: str) -> None:
    v = STREAMS[name]
    writer = SegmentWriter(bytes.fromhex(v["dek"]), region=v["region"], request_id=v["request_id"],
                           salt=bytes.fromhex(v["salt"]), nonce_prefix=bytes.fromhex(v["nonce_prefix"]))
    assert writer.header.hex() == v["header"]
    for segment in v["segments"]:
        sealed = writer.seal(bytes.fromhex(segment["plaintext"]), final=segment["last"])
        assert bytes(sealed).hex() == segment["segment"]
    assert v["stream"] == v["header"] + "".join(s["segment"] for s in v["segments"])


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_reader_opens_the_stream_vector(name: str) -> None:
    v = STREAMS[name]
    opened = open_stream(bytes.fromhex(v["dek"]), bytes.fromhex(v["stream"]), region=v["region"],
                         request_id=v["request_id"])
    assert [s.hex() for s in opened.segments] == [s["plaintext"] for s in v["segments"]]
    assert opened.complete is v["complete"]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_vector_opens_under_the_reference_recipe(name: str) -> None:
    """What FORMAT.md tells a third party: HKDF, then AES-GCM per segment with the documented nonce and AAD."""
    v = STREAMS[name]
    key = ref.segment_key(bytes.fromhex(v["dek"]), bytes.fromhex(v["salt"]), v["region"], v["request_id"])
    assert key.hex() == v["segment_key"]
    stream = bytes.fromhex(v["stream"])
    position = 40
    for segment in v["segments"]:
        word = int.from_bytes(stream[position : position + 4], "big")
        last, length = bool(word >> 31), word & 0x7FFF_FFFF
        sealed = stream[position + 4 : position + 4 + length]
        nonce = bytes.fromhex(v["nonce_prefix"]) + segment["index"].to_bytes(4, "big") + bytes([last])
        assert nonce.hex() == segment["nonce"]
        assert ref.aad(v["region"], v["request_id"], segment["index"], last).hex() == segment["aad"]
        assert AESGCM(key).decrypt(nonce, sealed, bytes.fromhex(segment["aad"])).hex() == segment["plaintext"]
        position += 4 + length
    assert position == len(stream)


def test_stream_vector_does_not_open_in_another_region() -> None:
    v = STREAMS["three-segments"]
    with pytest.raises(IntegrityError) as err:
        open_stream(bytes.fromhex(v["dek"]), bytes.fromhex(v["stream"]), region="westeurope",
                    request_id=v["request_id"])
    assert err.value.segment == 0


def _local_keyring_holding(tmp_path: Path, v: dict[str, Any]) -> LocalKeyring:
    bucket = KeyBucket(v["region"], datetime.fromisoformat(v["bucket_hour"]))
    keyring = LocalKeyring(tmp_path / "kr", clock=ManualClock(bucket.hour), bucket_lifetime=KEY_LIFETIME)
    path = keyring._kek_path(bucket)
    path.parent.mkdir(mode=0o700, parents=True)
    path.write_bytes(keyring._seal_file(bucket, bytes.fromhex(v["kek"]), []))
    return keyring


@pytest.mark.parametrize("name", sorted(WRAPPED))
async def test_wrapped_key_vector_parses_and_unwraps(name: str, tmp_path: Path) -> None:
    v = WRAPPED[name]
    wrapped = WrappedKey.from_bytes(bytes.fromhex(v["wrapped_key"]))
    bucket = wrapped.bucket(v["region"])
    assert bucket.hour == datetime.fromisoformat(v["bucket_hour"])
    assert wrapped.sealed.hex() == v["provider_blob"]
    assert data_key_context(v["region"], v["request_id"], bucket).hex() == v["context"]
    blob = bytes.fromhex(v["provider_blob"])
    assert AESGCM(bytes.fromhex(v["kek"])).decrypt(blob[1:13], blob[13:], bytes.fromhex(v["context"])).hex() == v["dek"]

    keyring = _local_keyring_holding(tmp_path, v)
    with await unwrap_data_key(keyring, wrapped, region=v["region"], request_id=v["request_id"]) as dek:
        assert dek.same_as(DataKey(bytes.fromhex(v["dek"])))
