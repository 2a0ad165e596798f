"""The request ID has one shape: exactly 32 lower-case hex digits, minted by the server."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.request_id import InvalidRequestId, is_request_id, is_stored_name, new_request_id, parse_request_id
from app.storage.layout import RecordingKey, parse_part_name

HEX32 = re.compile(r"[0-9a-f]{32}")


def test_minted_ids_are_32_lower_case_hex_and_distinct() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    for rid in ids:
        assert HEX32.fullmatch(rid)
        assert parse_request_id(rid) == rid
        assert is_stored_name(rid)


@given(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32))
def test_every_32_lower_hex_string_parses_to_itself(text: str) -> None:
    assert is_request_id(text)
    assert parse_request_id(text) == text


@given(st.text())
def test_anything_that_is_not_exactly_32_lower_hex_is_refused(text: str) -> None:
    if HEX32.fullmatch(text):
        return
    assert not is_request_id(text)
    with pytest.raises(InvalidRequestId):
        parse_request_id(text)


@given(st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), st.sampled_from(["\n", " ", "\r\n", "0"]))
def test_a_trailing_character_or_newline_is_refused(text: str, tail: str) -> None:
    assert not is_request_id(text + tail)
    assert not is_request_id(tail + text)


@pytest.mark.parametrize("text", ["A" * 32, "0123456789ABCDEF0123456789abcdef", "0" * 31, "0" * 33, "",
                                  "g" * 32, "0123456789abcdef0123456789abcde\n", "\uff10" * 32, "\u0663" * 32])
def test_upper_case_wrong_length_and_unicode_digits_are_refused(text: str) -> None:
    assert not is_request_id(text)
    with pytest.raises(InvalidRequestId, match="request_id"):
        parse_request_id(text)


@pytest.mark.parametrize("value", [None, 123, b"0" * 32])
def test_non_strings_are_refused(value: object) -> None:
    assert not is_request_id(value)
    with pytest.raises(InvalidRequestId):
        parse_request_id(value)


def test_the_refusal_does_not_echo_the_input() -> None:
    with pytest.raises(InvalidRequestId) as refused:
        parse_request_id("<script>secret</script>")
    assert "secret" not in str(refused.value)


def test_a_minted_id_is_the_storage_name_and_parses_back() -> None:
    rid = new_request_id()
    key = RecordingKey(rid, datetime(2025, 1, 2, 3, 4, tzinfo=UTC))
    assert key.name == f"2025/01/02/03/{rid}"
    parsed = parse_part_name(key.part_name(2))
    assert parsed is not None
    assert (parsed.request_id, parsed.index) == (rid, 2)


def test_storage_still_reads_names_in_the_legacy_shape() -> None:
    """Names checked against the older URL-safe rule stay readable; they are not request IDs."""
    assert is_stored_name("rq_0123456789")
    assert not is_request_id("rq_0123456789")
    parsed = parse_part_name("2025/02/03/04/rq_0123456789")
    assert parsed is not None
    assert parsed.request_id == "rq_0123456789"
