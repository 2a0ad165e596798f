"""The sealed segment stream (docs/FORMAT.md): Tink's AES-GCM-HKDF streaming construction, kept small.

A recording is a 40-byte header followed by segments, each appended to storage as one unit:

    header  = version (1) | salt (32) | nonce prefix (7)
    segment = frame (u32 BE: last flag in bit 31, sealed length in bits 0-30) | AES-256-GCM ciphertext | tag (16)

The segment key is HKDF-SHA256(DEK, salt, info = version | region | request ID); the nonce is
prefix | u32 index | last byte; the associated data binds version, region, request ID, index and the last
flag, so a stream opens only under its own region and request ID (C3) and every reordered, dropped,
duplicated or spliced segment is caught. A stream that stops before its final segment opens as truncated.
"""

from __future__ import annotations

import os
import struct
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.vault.datakey import BytesLike, DataKey
from app.vault.errors import IntegrityError, MalformedHeader, ShortRead, StreamError, UnknownVersion, WriterClosed

FORMAT_VERSION = 1
SALT_SIZE = 32
NONCE_PREFIX_SIZE = 7
HEADER_SIZE = 1 + SALT_SIZE + NONCE_PREFIX_SIZE  # 40
FRAME_SIZE = 4
TAG_SIZE = 16
SEGMENT_OVERHEAD = FRAME_SIZE + TAG_SIZE  # 20 bytes per segment
LAST_FLAG = 0x8000_0000
MAX_SEGMENT_PLAINTEXT = 16 * 1024 * 1024
MAX_SEGMENTS = 2**32  # the index is a u32 inside the nonce
MAX_NAME_BYTES = 255

_U32 = struct.Struct(">I")
_INDEX_LAST = struct.Struct(">IB")
_SUPPORTED_VERSIONS = frozenset({FORMAT_VERSION})


def encode_binding(region: str, request_id: str) -> bytes:
    """u8 length | UTF-8 region | u8 length | UTF-8 request ID: the C3 binding shared by HKDF info and AAD."""
    out = bytearray()
    for name, value in (("region", region), ("request_id", request_id)):
        raw = value.encode("utf-8")
        if not 1 <= len(raw) <= MAX_NAME_BYTES:
            raise ValueError(f"{name} must be 1 to {MAX_NAME_BYTES} UTF-8 bytes")
        out.append(len(raw))
        out += raw
    return bytes(out)


@dataclass(frozen=True, slots=True)
class StreamHeader:
    """The 40 bytes that open a stream. Salt and prefix are random per recording and not secret."""

    salt: bytes
    nonce_prefix: bytes
    version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if len(self.salt) != SALT_SIZE or len(self.nonce_prefix) != NONCE_PREFIX_SIZE:
            raise ValueError("salt is 32 bytes and nonce prefix 7 bytes")

    @classmethod
    def generate(cls) -> StreamHeader:
        return cls(salt=os.urandom(SALT_SIZE), nonce_prefix=os.urandom(NONCE_PREFIX_SIZE))

    def to_bytes(self) -> bytes:
        return bytes([self.version]) + self.salt + self.nonce_prefix

    @classmethod
    def parse(cls, data: BytesLike) -> StreamHeader:
        """Parse the first 40 bytes of `data`; typed errors for an empty, short or unknown-version header."""
        view = memoryview(data)
        if len(view) == 0:
            raise MalformedHeader("the stream is empty")
        if view[0] not in _SUPPORTED_VERSIONS:
            raise UnknownVersion(view[0])
        if len(view) < HEADER_SIZE:
            raise MalformedHeader(f"{len(view)} bytes where the header needs {HEADER_SIZE}")
        return cls(salt=bytes(view[1 : 1 + SALT_SIZE]), nonce_prefix=bytes(view[1 + SALT_SIZE : HEADER_SIZE]),
                   version=view[0])


class SegmentCipher:
    """The per-recording segment key with its nonce and associated-data layout."""

    __slots__ = ("_aad_prefix", "_aead", "_nonce_prefix")

    def __init__(self, dek: DataKey | BytesLike, header: StreamHeader, *, region: str, request_id: str) -> None:
        binding = encode_binding(region, request_id)
        material = dek.material() if isinstance(dek, DataKey) else memoryview(dek)
        if len(material) != 32:
            raise ValueError("a data key is 32 bytes")
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=header.salt, info=bytes([header.version]) + binding)
        segment_key = bytearray(hkdf.derive(material))
        self._aead = AESGCM(segment_key)
        segment_key[:] = bytes(32)
        self._nonce_prefix = header.nonce_prefix
        self._aad_prefix = bytes([header.version]) + binding

    def nonce(self, index: int, last: bool) -> bytes:
        return self._nonce_prefix + _INDEX_LAST.pack(index, last)

    def associated_data(self, index: int, last: bool) -> bytes:
        return self._aad_prefix + _INDEX_LAST.pack(index, last)

    def seal_into(self, index: int, last: bool, plaintext: BytesLike, out: memoryview) -> None:
        suffix = _INDEX_LAST.pack(index, last)
        self._aead.encrypt_into(self._nonce_prefix + suffix, plaintext, self._aad_prefix + suffix, out)

    def open(self, index: int, last: bool, sealed: memoryview) -> bytes:
        suffix = _INDEX_LAST.pack(index, last)
        try:
            return self._aead.decrypt(self._nonce_prefix + suffix, sealed, self._aad_prefix + suffix)
        except InvalidTag:
            raise IntegrityError("authentication failed", segment=index) from None


class SegmentWriter:
    """Seals one recording's segments in order; the recorder appends `header`, then each `seal()` result.

    `salt` and `nonce_prefix` exist for test vectors only; production leaves them random.
    """

    def __init__(
        self,
        dek: DataKey | BytesLike,
        *,
        region: str,
        request_id: str,
        salt: bytes | None = None,
        nonce_prefix: bytes | None = None,
    ) -> None:
        generated = StreamHeader.generate()
        self._header = StreamHeader(
            salt=generated.salt if salt is None else salt,
            nonce_prefix=generated.nonce_prefix if nonce_prefix is None else nonce_prefix,
        )
        self._cipher = SegmentCipher(dek, self._header, region=region, request_id=request_id)
        self._index = 0
        self._finished = False

    @property
    def header(self) -> bytes:
        """The 40-byte stream header; append it before (or together with) the first segment."""
        return self._header.to_bytes()

    @property
    def next_index(self) -> int:
        return self._index

    @property
    def finished(self) -> bool:
        return self._finished

    def seal(self, plaintext: BytesLike, *, final: bool = False) -> bytearray:
        """Frame and seal the next segment; `final=True` closes the stream (nothing may follow it)."""
        if self._finished:
            raise WriterClosed("the final segment has been sealed")
        index = self._index
        if index >= MAX_SEGMENTS:
            raise WriterClosed("segment indices exhausted")
        size = memoryview(plaintext).nbytes
        if size > MAX_SEGMENT_PLAINTEXT:
            raise ValueError(f"a segment carries at most {MAX_SEGMENT_PLAINTEXT} bytes")
        # One allocation and no copy: the frame is written in front, AES-GCM seals straight behind it.
        out = bytearray(FRAME_SIZE + size + TAG_SIZE)
        _U32.pack_into(out, 0, (size + TAG_SIZE) | (LAST_FLAG if final else 0))
        self._cipher.seal_into(index, final, plaintext, memoryview(out)[FRAME_SIZE:])
        self._index = index + 1
        self._finished = final
        return out

    def seal_final(self, plaintext: BytesLike = b"") -> bytearray:
        """Seal the last segment (possibly empty): the reader then reports the stream complete."""
        return self.seal(plaintext, final=True)


@dataclass(frozen=True, slots=True)
class Segment:
    index: int
    plaintext: bytes
    last: bool


class SegmentReader:
    """Opens a stream incrementally: `feed()` bytes as they arrive, `close()` at the end of the data.

    Segments come out in order as soon as they are whole; the first bad byte raises a typed error naming
    the segment (segments before it were already returned and are authentic).
    """

    def __init__(self, dek: DataKey | BytesLike, *, region: str, request_id: str) -> None:
        # A private copy, zeroed as soon as the header arrives and the segment key is derived.
        self._material = bytearray(dek.material() if isinstance(dek, DataKey) else dek)
        self._region = region
        self._request_id = request_id
        encode_binding(region, request_id)  # fail early on bad names
        self._cipher: SegmentCipher | None = None
        self._pending = bytearray()
        self._index = 0
        self._complete = False
        self._failure: StreamError | None = None

    @property
    def complete(self) -> bool:
        """True once the final segment was opened."""
        return self._complete

    def feed(self, data: BytesLike) -> list[Segment]:
        """Segments completed by `data`, in order. After an error the reader only repeats that error."""
        if self._failure is not None:
            raise self._failure
        try:
            return self._feed(data)
        except StreamError as exc:
            self._failure = exc
            raise

    def close(self) -> bool:
        """End of data: True if the stream is complete, False if it is truncated after a whole segment."""
        if self._failure is not None:
            raise self._failure
        if self._cipher is None:
            StreamHeader.parse(self._pending)  # raises the precise header error
        if self._pending:
            raise ShortRead(f"the data ends {len(self._pending)} bytes into the segment", segment=self._index)
        return self._complete

    def _feed(self, data: BytesLike) -> list[Segment]:
        if self._pending:
            self._pending += data
            with memoryview(self._pending) as view:
                segments, used = self._consume(view)
            del self._pending[:used]
            return segments
        with memoryview(data) as view:
            segments, used = self._consume(view)
            self._pending += view[used:]
        return segments

    def _consume(self, view: memoryview) -> tuple[list[Segment], int]:
        pos = 0
        if self._cipher is None:
            if len(view) == 0:
                return [], 0
            if len(view) < HEADER_SIZE:
                if view[0] not in _SUPPORTED_VERSIONS:
                    raise UnknownVersion(view[0])
                return [], 0
            header = StreamHeader.parse(view)
            self._cipher = SegmentCipher(self._material, header, region=self._region, request_id=self._request_id)
            self._material[:] = bytes(len(self._material))
            pos = HEADER_SIZE
        segments: list[Segment] = []
        end = len(view)
        while pos < end:
            if self._complete:
                raise IntegrityError("data after the final segment", segment=self._index)
            if end - pos < FRAME_SIZE:
                break
            (word,) = _U32.unpack_from(view, pos)
            last = bool(word & LAST_FLAG)
            length = word & ~LAST_FLAG
            if not TAG_SIZE <= length <= MAX_SEGMENT_PLAINTEXT + TAG_SIZE:
                raise IntegrityError("frame length out of range", segment=self._index)
            if end - pos - FRAME_SIZE < length:
                break
            if self._index >= MAX_SEGMENTS:
                raise IntegrityError("too many segments", segment=self._index)
            start = pos + FRAME_SIZE
            plaintext = self._cipher.open(self._index, last, view[start : start + length])
            segments.append(Segment(self._index, plaintext, last))
            self._index += 1
            self._complete = last
            pos = start + length
        return segments, pos


@dataclass(frozen=True, slots=True)
class OpenedStream:
    """What a stream holds: its segments' plaintexts, and whether the final segment was there."""

    segments: tuple[bytes, ...]
    complete: bool

    @property
    def truncated(self) -> bool:
        return not self.complete

    @property
    def plaintext(self) -> bytes:
        return b"".join(self.segments)


def open_stream(dek: DataKey | BytesLike, data: BytesLike, *, region: str, request_id: str) -> OpenedStream:
    """Open a whole stream held in memory. A stream without its final segment opens as truncated."""
    reader = SegmentReader(dek, region=region, request_id=request_id)
    segments = reader.feed(data)
    complete = reader.close()
    return OpenedStream(tuple(s.plaintext for s in segments), complete)


def iter_segments(
    dek: DataKey | BytesLike, chunks: Iterable[BytesLike], *, region: str, request_id: str
) -> Iterator[Segment]:
    """Yield segments as `chunks` (any split of the stream) arrive; `Segment.last` marks completion."""
    reader = SegmentReader(dek, region=region, request_id=request_id)
    for chunk in chunks:
        yield from reader.feed(chunk)
    reader.close()


async def aiter_segments(
    dek: DataKey | BytesLike, chunks: AsyncIterable[BytesLike], *, region: str, request_id: str
) -> AsyncIterator[Segment]:
    """`iter_segments` over an async byte source such as a blob download."""
    reader = SegmentReader(dek, region=region, request_id=request_id)
    async for chunk in chunks:
        for segment in reader.feed(chunk):
            yield segment
    reader.close()
