"""The sealed segment stream: round trips, truncation, C3 binding, and typed errors on bad input."""

from __future__ import annotations

import pytest

from app.vault.datakey import DataKey
from app.vault.errors import IntegrityError, MalformedHeader, ShortRead, UnknownVersion, WriterClosed
from app.vault.segments import (
    HEADER_SIZE,
    MAX_SEGMENT_PLAINTEXT,
    SEGMENT_OVERHEAD,
    SegmentReader,
    SegmentWriter,
    aiter_segments,
    iter_segments,
    open_stream,
)
from tests.vault.streams import REGION, REQUEST_ID, seal_stream


@pytest.fixture
def dek() -> DataKey:
    return DataKey.generate()


def test_sealed_stream_opens_to_the_same_segments_and_is_complete(dek: DataKey) -> None:
    plaintexts = [b"caller: hello", b"", b"x" * 5000, b"bye"]
    stream, _ = seal_stream(dek, plaintexts)

    opened = open_stream(dek, stream, region=REGION, request_id=REQUEST_ID)

    assert opened.segments == tuple(plaintexts)
    assert opened.complete
    assert not opened.truncated
    assert opened.plaintext == b"".join(plaintexts)


def test_each_segment_costs_exactly_the_documented_overhead(dek: DataKey) -> None:
    writer = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)
    assert len(writer.header) == HEADER_SIZE == 40
    for size in (0, 1, 96_000):
        assert len(writer.seal(b"a" * size)) == size + SEGMENT_OVERHEAD == size + 20


def test_stream_without_final_segment_opens_as_truncated_not_corrupt(dek: DataKey) -> None:
    stream, _ = seal_stream(dek, [b"one", b"two"], final=False)
    opened = open_stream(dek, stream, region=REGION, request_id=REQUEST_ID)
    assert opened.segments == (b"one", b"two")
    assert opened.truncated


def test_header_alone_opens_as_an_empty_truncated_stream(dek: DataKey) -> None:
    writer = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)
    opened = open_stream(dek, writer.header, region=REGION, request_id=REQUEST_ID)
    assert opened.segments == ()
    assert opened.truncated


def test_empty_final_segment_marks_completion(dek: DataKey) -> None:
    writer = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)
    stream = writer.header + writer.seal(b"audio") + writer.seal_final()
    opened = open_stream(dek, stream, region=REGION, request_id=REQUEST_ID)
    assert opened.segments == (b"audio", b"")
    assert opened.complete


def test_two_recordings_under_one_key_share_no_ciphertext(dek: DataKey) -> None:
    a, _ = seal_stream(dek, [b"same words"])
    b, _ = seal_stream(dek, [b"same words"])
    assert a[HEADER_SIZE:] != b[HEADER_SIZE:]  # fresh salt and nonce prefix per recording


def test_writer_refuses_anything_after_the_final_segment(dek: DataKey) -> None:
    writer = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)
    writer.seal_final(b"end")
    assert writer.finished
    with pytest.raises(WriterClosed):
        writer.seal(b"more")


def test_writer_refuses_an_oversized_segment(dek: DataKey) -> None:
    writer = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)
    with pytest.raises(ValueError, match="at most"):
        writer.seal(bytes(MAX_SEGMENT_PLAINTEXT + 1))
    assert writer.next_index == 0


def test_writer_keeps_working_after_the_data_key_is_destroyed(dek: DataKey) -> None:
    writer = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)
    copy = DataKey(dek.material())
    dek.destroy()
    stream = writer.header + writer.seal_final(b"still sealed")
    assert open_stream(copy, stream, region=REGION, request_id=REQUEST_ID).segments == (b"still sealed",)


# --- C3: region and request ID are bound into every segment --------------------------------------


@pytest.mark.parametrize(("region", "request_id"), [("westeurope", REQUEST_ID), (REGION, "another-request-id")])
def test_c3_stream_copied_under_another_region_or_request_id_does_not_open(
    dek: DataKey, region: str, request_id: str
) -> None:
    stream, _ = seal_stream(dek, [b"hello", b"world"])
    with pytest.raises(IntegrityError) as err:
        open_stream(dek, stream, region=region, request_id=request_id)
    assert err.value.segment == 0


def test_stream_does_not_open_under_another_data_key(dek: DataKey) -> None:
    stream, _ = seal_stream(dek, [b"hello"])
    with pytest.raises(IntegrityError):
        open_stream(DataKey.generate(), stream, region=REGION, request_id=REQUEST_ID)


# --- streaming reader -----------------------------------------------------------------------------


def test_reader_yields_segments_as_bytes_trickle_in(dek: DataKey) -> None:
    plaintexts = [b"a" * 10, b"b" * 300, b"c"]
    stream, _ = seal_stream(dek, plaintexts)
    segments = list(iter_segments(dek, (stream[i : i + 7] for i in range(0, len(stream), 7)),
                                  region=REGION, request_id=REQUEST_ID))
    assert [s.plaintext for s in segments] == plaintexts
    assert [s.index for s in segments] == [0, 1, 2]
    assert [s.last for s in segments] == [False, False, True]


async def test_async_reader_opens_a_chunked_download(dek: DataKey) -> None:
    stream, _ = seal_stream(dek, [b"first", b"second"])

    async def chunks() -> object:
        for i in range(0, len(stream), 16):
            yield stream[i : i + 16]

    got = [s.plaintext async for s in aiter_segments(dek, chunks(), region=REGION, request_id=REQUEST_ID)]  # type: ignore[arg-type]
    assert got == [b"first", b"second"]


def test_reader_returns_authentic_segments_before_the_bad_one(dek: DataKey) -> None:
    stream, parts = seal_stream(dek, [b"good", b"bad"])
    tampered = bytearray(stream)
    tampered[len(parts[0]) + len(parts[1]) + 5] ^= 1
    reader = SegmentReader(dek, region=REGION, request_id=REQUEST_ID)
    good = reader.feed(tampered[: len(parts[0]) + len(parts[1])])
    assert [s.plaintext for s in good] == [b"good"]
    with pytest.raises(IntegrityError) as err:
        reader.feed(tampered[len(parts[0]) + len(parts[1]) :])
    assert err.value.segment == 1


# --- bad input: typed errors, never a crash --------------------------------------------------------


def test_empty_stream_is_a_malformed_header(dek: DataKey) -> None:
    with pytest.raises(MalformedHeader) as err:
        open_stream(dek, b"", region=REGION, request_id=REQUEST_ID)
    assert err.value.segment is None
    assert err.value.code == "malformed_header"


@pytest.mark.parametrize("length", [1, 20, HEADER_SIZE - 1])
def test_stream_cut_inside_its_header_is_a_malformed_header(dek: DataKey, length: int) -> None:
    stream, _ = seal_stream(dek, [b"x"])
    with pytest.raises(MalformedHeader, match=f"{length} bytes"):
        open_stream(dek, stream[:length], region=REGION, request_id=REQUEST_ID)


@pytest.mark.parametrize("version", [0, 2, 0x56, 0xFF])
def test_unknown_version_is_named(dek: DataKey, version: int) -> None:
    stream, _ = seal_stream(dek, [b"x"])
    with pytest.raises(UnknownVersion) as err:
        open_stream(dek, bytes([version]) + stream[1:], region=REGION, request_id=REQUEST_ID)
    assert err.value.version == version


def test_unknown_version_is_seen_on_the_first_byte(dek: DataKey) -> None:
    reader = SegmentReader(dek, region=REGION, request_id=REQUEST_ID)
    with pytest.raises(UnknownVersion):
        reader.feed(b"\x07")


@pytest.mark.parametrize("cut", [1, 3, 4, 10, 24])
def test_stream_cut_inside_a_segment_is_a_short_read_naming_it(dek: DataKey, cut: int) -> None:
    stream, parts = seal_stream(dek, [b"first", b"second segment"])
    end = len(parts[0]) + len(parts[1]) + cut
    with pytest.raises(ShortRead) as err:
        open_stream(dek, stream[:end], region=REGION, request_id=REQUEST_ID)
    assert err.value.segment == 1


@pytest.mark.parametrize("frame", [b"\x00\x00\x00\x00", b"\x00\x00\x00\x0f", b"\x7f\xff\xff\xff", b"\xff\xff\xff\xff"])
def test_frame_length_out_of_range_is_an_integrity_error(dek: DataKey, frame: bytes) -> None:
    writer = SegmentWriter(dek, region=REGION, request_id=REQUEST_ID)
    with pytest.raises(IntegrityError, match="frame length") as err:
        open_stream(dek, writer.header + frame + bytes(64), region=REGION, request_id=REQUEST_ID)
    assert err.value.segment == 0


def test_bytes_after_the_final_segment_are_an_integrity_error(dek: DataKey) -> None:
    stream, _ = seal_stream(dek, [b"a", b"b"])
    with pytest.raises(IntegrityError, match="after the final") as err:
        open_stream(dek, stream + b"\x00", region=REGION, request_id=REQUEST_ID)
    assert err.value.segment == 2


def test_errors_name_segments_but_carry_no_content(dek: DataKey) -> None:
    marker = b"SECRET-MARKER-4711"
    stream, _ = seal_stream(dek, [marker])
    with pytest.raises(IntegrityError) as err:
        open_stream(dek, stream, region=REGION, request_id="wrong")
    assert "SECRET" not in str(err.value)
    assert "SECRET" not in repr(err.value.args)


def test_bad_names_are_refused_before_sealing(dek: DataKey) -> None:
    with pytest.raises(ValueError, match="region"):
        SegmentWriter(dek, region="", request_id=REQUEST_ID)
    with pytest.raises(ValueError, match="request_id"):
        SegmentWriter(dek, region=REGION, request_id="r" * 256)


def test_data_key_is_zeroed_on_destroy_and_never_printed() -> None:
    dek = DataKey.generate()
    view = dek.material()
    assert "redacted" in repr(dek)
    with dek:
        pass
    assert bytes(view) == bytes(32)
    assert dek.destroyed
    with pytest.raises(ValueError, match="destroyed"):
        dek.material()


def test_a_failed_reader_keeps_failing_and_never_resyncs(dek: DataKey) -> None:
    stream, parts = seal_stream(dek, [b"one", b"two", b"three"])
    tampered = bytearray(stream)
    tampered[len(parts[0]) + 6] ^= 1
    reader = SegmentReader(dek, region=REGION, request_id=REQUEST_ID)
    with pytest.raises(IntegrityError):
        reader.feed(tampered)
    with pytest.raises(IntegrityError):
        reader.feed(b"")
    with pytest.raises(IntegrityError):
        reader.close()
