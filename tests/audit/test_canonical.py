"""The canonical encoding is byte-exact: test vectors (the same as docs/AUDIT.md) and a from-the-spec re-encoder."""

from __future__ import annotations

import base64
import hashlib
import struct
from datetime import UTC, datetime, timedelta, timezone

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from app.audit.actions import InvalidAuditEntry
from app.audit.canonical import (
    GENESIS_HASH,
    canonical_json,
    canonical_time,
    checkpoint_message,
    encode_entry,
    encode_entry_text,
)
from app.audit.keys import SigningKey, key_id_for

MOMENT = datetime(2030, 3, 4, 10, 0, 0, 123456, tzinfo=UTC)
DETAIL_1 = '{"duration_s":3600,"justification":"caller heard silence at 00:41","request_ids":["req-1"]}'
HASH_1 = "19003d80921cb1740d7a59de56afc471296a2332d34b7219277f24c3b4215f55"
HASH_2 = "d296d828764629f23bf678cb72253d9cb23282ceb1bece1b7b7d873bd83c24cf"
KEY_ID = "ed25519:56475aa75463474c"
SIGNATURE = ("wTDNpf2k4VlWEjxqfr3Olxnp8oh/LSsx6p1Rww7rbvytOPk6TWwVxaMrpbiwMrHkelsKu4+gaqltXjmo6TqeBQ==")


def spec_encoding(seq: int, time_text: str, fields: list[str], optional: list[str | None], detail: str,
                  prev_hash: str) -> bytes:
    """docs/AUDIT.md, written again from the prose, independently of app.audit.canonical."""
    def text(value: str) -> bytes:
        raw = value.encode("utf-8")
        return struct.pack(">I", len(raw)) + raw

    out = b"voicelog/audit/entry/v1\n" + struct.pack(">Q", seq) + text(time_text)
    out += b"".join(text(f) for f in fields)
    out += b"".join(b"\xff\xff\xff\xff" if o is None else text(o) for o in optional)
    return out + text(detail) + bytes.fromhex(prev_hash)


def test_entry_vectors() -> None:
    assert canonical_json({"request_ids": ["req-1"], "justification": "caller heard silence at 00:41",
                           "duration_s": 3600}) == DETAIL_1
    first = encode_entry(1, MOMENT, "staff", "alice", "access.requested", "T-1", None, "G-1", None, None, DETAIL_1,
                         GENESIS_HASH)
    assert first == spec_encoding(1, "2030-03-04T10:00:00.123456Z", ["staff", "alice", "access.requested"],
                                  ["T-1", None, "G-1", None, None], DETAIL_1, GENESIS_HASH)
    assert hashlib.sha256(first).hexdigest() == HASH_1
    detail_2 = canonical_json({"region": "eastus", "started_at": "2030-02-02T10:00:00.000000Z", "age_s": 2592000,
                               "reason": "retention"})
    second = encode_entry(2, MOMENT, "system", "voicelog", "recording.purged", None, "req-1", None, None, "res-1",
                          detail_2, HASH_1)
    assert hashlib.sha256(second).hexdigest() == HASH_2


def test_checkpoint_vector() -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    key = SigningKey(KEY_ID, private, MOMENT)
    assert key_id_for(key.public_info.public_key) == KEY_ID
    message = checkpoint_message(number=1, head_seq=2, head_hash=HASH_2, signed_at=MOMENT, key_id=KEY_ID,
                                 prev_signature=b"")
    assert message == (b"voicelog/audit/checkpoint/v1\n" + struct.pack(">QQ", 1, 2) + bytes.fromhex(HASH_2)
                       + struct.pack(">I", 27) + b"2030-03-04T10:00:00.123456Z"
                       + struct.pack(">I", 24) + KEY_ID.encode() + struct.pack(">I", 0))
    assert base64.b64encode(key.sign(message)).decode() == SIGNATURE


def test_canonical_time_is_utc_with_six_digits() -> None:
    assert canonical_time(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2030-01-02T03:04:05.000000Z"
    plus_two = datetime(2030, 1, 2, 5, 4, 5, 7, tzinfo=timezone(timedelta(hours=2)))
    assert canonical_time(plus_two) == "2030-01-02T03:04:05.000007Z"
    with pytest.raises(ValueError, match="naive"):
        canonical_time(datetime(2030, 1, 2))


def test_canonical_json_is_one_text_per_value() -> None:
    assert canonical_json({"b": [1, True, None], "a": "é\n\"/"}) == '{"a":"\\u00e9\\n\\"/","b":[1,true,null]}'
    assert canonical_json({}) == "{}"
    for bad in ({"x": 1.0}, {"x": float("nan")}, {"x": 2**60}, {1: "x"}, {"x": b"bytes"}):
        with pytest.raises(InvalidAuditEntry):
            canonical_json(bad)  # type: ignore[arg-type]


ids = st.one_of(st.none(), st.text(min_size=0, max_size=20))


@given(seq=st.integers(1, 2**62), micros=st.integers(0, 10**15), actor=st.text(max_size=30),
       optional=st.lists(ids, min_size=5, max_size=5), detail=st.text(max_size=50),
       prev=st.binary(min_size=32, max_size=32))
def test_the_encoder_matches_the_spec_for_any_entry(seq: int, micros: int, actor: str, optional: list[str | None],
                                                    detail: str, prev: bytes) -> None:
    moment = datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
    time_text = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    ours = encode_entry_text(seq, time_text, "staff", actor, "admin.changed", *optional, detail, prev.hex())
    assert ours == spec_encoding(seq, time_text, ["staff", actor, "admin.changed"], optional, detail, prev.hex())
    assert encode_entry(seq, moment, "staff", actor, "admin.changed", *optional, detail, prev.hex()) == ours
