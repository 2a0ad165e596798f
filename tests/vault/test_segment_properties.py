"""Property tests (hypothesis): any tampering with a sealed recording fails to open at the right segment,
and any prefix of whole segments opens as truncated."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.vault.datakey import DataKey
from app.vault.errors import IntegrityError, ShortRead, StreamError, UnknownVersion
from app.vault.segments import HEADER_SIZE, open_stream
from tests.vault.streams import REGION, REQUEST_ID, seal_stream

DEK = DataKey(bytes(range(32)))
OTHER_DEK = DataKey(bytes(range(32, 64)))

plaintexts = st.lists(st.binary(max_size=64), min_size=1, max_size=6)
# Per test, never a global profile: other domains' property tests keep their own settings.
relaxed = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _segment_at(parts: list[bytes], offset: int) -> int | None:
    """Index of the segment holding byte `offset` of the stream (None: the header)."""
    if offset < HEADER_SIZE:
        return None
    position = HEADER_SIZE
    for index, part in enumerate(parts[1:]):
        if offset < position + len(part):
            return index
        position += len(part)
    raise AssertionError("offset beyond the stream")


def _open(stream: bytes) -> None:
    open_stream(DEK, stream, region=REGION, request_id=REQUEST_ID)


@relaxed
@given(plaintexts, st.data())
def test_any_single_bit_flip_fails_at_the_segment_it_hits(texts: list[bytes], data: st.DataObject) -> None:
    stream, parts = seal_stream(DEK, texts)
    offset = data.draw(st.integers(0, len(stream) - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    tampered = bytearray(stream)
    tampered[offset] ^= 1 << bit

    with pytest.raises(StreamError) as err:
        _open(bytes(tampered))

    hit = _segment_at(parts, offset)
    if offset == 0:
        assert isinstance(err.value, UnknownVersion)
    elif hit is None:  # salt or nonce prefix: the first segment no longer authenticates
        assert isinstance(err.value, IntegrityError)
        assert err.value.segment == 0
    else:  # a frame bit may also make the length overrun the data: a short read of that segment
        assert isinstance(err.value, (IntegrityError, ShortRead))
        assert err.value.segment == hit


@relaxed
@given(plaintexts, st.data())
def test_truncation_inside_a_segment_fails_at_that_segment(texts: list[bytes], data: st.DataObject) -> None:
    stream, parts = seal_stream(DEK, texts)
    index = data.draw(st.integers(0, len(texts) - 1), label="segment")
    start = HEADER_SIZE + sum(len(p) for p in parts[1 : index + 1])
    cut = data.draw(st.integers(1, len(parts[index + 1]) - 1), label="cut")

    with pytest.raises(ShortRead) as err:
        _open(stream[: start + cut])
    assert err.value.segment == index


@relaxed
@given(plaintexts, st.data())
def test_any_prefix_of_whole_segments_opens_as_truncated(texts: list[bytes], data: st.DataObject) -> None:
    _stream, parts = seal_stream(DEK, texts)
    keep = data.draw(st.integers(0, len(texts) - 1), label="segments kept")

    opened = open_stream(DEK, b"".join(parts[: keep + 1]), region=REGION, request_id=REQUEST_ID)

    assert opened.truncated
    assert opened.segments == tuple(texts[:keep])


@relaxed
@given(st.lists(st.binary(max_size=32), min_size=2, max_size=6), st.data())
def test_dropping_a_segment_fails_at_its_place(texts: list[bytes], data: st.DataObject) -> None:
    _, parts = seal_stream(DEK, texts)
    drop = data.draw(st.integers(0, len(texts) - 2), label="dropped")  # dropping the last one is truncation
    segments = parts[1:]
    del segments[drop]

    with pytest.raises(IntegrityError) as err:
        _open(parts[0] + b"".join(segments))
    assert err.value.segment == drop


@relaxed
@given(plaintexts, st.data())
def test_duplicating_a_segment_fails_at_the_copy(texts: list[bytes], data: st.DataObject) -> None:
    _, parts = seal_stream(DEK, texts)
    index = data.draw(st.integers(0, len(texts) - 1), label="duplicated")
    segments = parts[1:]
    segments.insert(index + 1, segments[index])

    with pytest.raises(IntegrityError) as err:
        _open(parts[0] + b"".join(segments))
    assert err.value.segment == index + 1


@relaxed
@given(st.lists(st.binary(max_size=32), min_size=2, max_size=6), st.data())
def test_reordering_segments_fails_at_the_first_moved_one(texts: list[bytes], data: st.DataObject) -> None:
    _, parts = seal_stream(DEK, texts)
    order = data.draw(st.permutations(range(len(texts))), label="order")
    if list(order) == sorted(order):
        return
    segments = [parts[1 + i] for i in order]
    if segments == parts[1:]:
        return  # identical segments swapped: nothing changed

    with pytest.raises(IntegrityError) as err:
        _open(parts[0] + b"".join(segments))
    first_moved = next(i for i, j in enumerate(order) if parts[1 + i] != parts[1 + j])
    assert err.value.segment == first_moved


@relaxed
@given(plaintexts, plaintexts, st.data(), st.booleans())
def test_splicing_two_recordings_fails_at_the_splice(
    a: list[bytes], b: list[bytes], data: st.DataObject, same_key: bool
) -> None:
    """Segments of another recording (same or other DEK, same region and request ID) never fit in."""
    _, parts_a = seal_stream(DEK, a)
    _, parts_b = seal_stream(DEK if same_key else OTHER_DEK, b)
    keep = data.draw(st.integers(0, len(a) - 1), label="segments of A kept")
    take = data.draw(st.integers(0, len(b) - 1), label="segment of B spliced")

    with pytest.raises(IntegrityError) as err:
        _open(b"".join(parts_a[: keep + 1]) + parts_b[take + 1] + b"".join(parts_a[keep + 2 :]))
    assert err.value.segment == keep


@relaxed
@given(plaintexts, st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_c3_any_other_region_or_request_id_fails_at_segment_zero(texts: list[bytes], region: str, rid: str) -> None:
    stream, _ = seal_stream(DEK, texts)
    if (region, rid) == (REGION, REQUEST_ID):
        return
    with pytest.raises(IntegrityError) as err:
        open_stream(DEK, stream, region=region, request_id=rid)
    assert err.value.segment == 0


@relaxed
@given(plaintexts, st.lists(st.integers(1, 50), max_size=40))
def test_any_split_of_the_bytes_opens_the_same(texts: list[bytes], cuts: list[int]) -> None:
    from app.vault.segments import iter_segments

    stream, _ = seal_stream(DEK, texts)
    chunks, position = [], 0
    for size in cuts:
        chunks.append(stream[position : position + size])
        position += size
    chunks.append(stream[position:])
    got = list(iter_segments(DEK, chunks, region=REGION, request_id=REQUEST_ID))
    assert [s.plaintext for s in got] == texts
    assert got[-1].last
