"""Vault errors: typed, with a stable code, and never carrying key material or plaintext.

`vault` knows nothing of HTTP; callers map these to `AppError`s where a person may see them.
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar


class VaultError(Exception):
    """Base of every vault error. Messages name segments, buckets and sizes, never content."""

    code: ClassVar[str] = "vault_error"


# --- sealed streams --------------------------------------------------------------------------------


class StreamError(VaultError):
    """A sealed stream cannot be opened. `segment` is the failing segment's index (None: the header)."""

    code = "stream_error"

    def __init__(self, message: str, *, segment: int | None = None) -> None:
        where = "stream header" if segment is None else f"segment {segment}"
        super().__init__(f"{where}: {message}")
        self.segment = segment


class MalformedHeader(StreamError):
    """The stream header cannot be parsed (empty stream, or fewer than its fixed 40 bytes)."""

    code = "malformed_header"


class UnknownVersion(StreamError):
    """The stream (or wrapped key) names a format version this code does not read."""

    code = "unknown_version"

    def __init__(self, version: int, *, what: str = "stream") -> None:
        VaultError.__init__(self, f"{what}: unknown format version {version}")
        self.segment = None
        self.version = version


class ShortRead(StreamError):
    """The data ends inside a segment: its frame header or its sealed body is cut short."""

    code = "short_read"


class IntegrityError(StreamError):
    """A segment fails authentication: flipped bits, reordered, dropped, duplicated or spliced segments,
    or a stream opened under another region, request ID or key (C3)."""

    code = "integrity_error"


class WriterClosed(VaultError):
    """The writer has sealed its final segment (or ran out of segment indices); nothing more may follow."""

    code = "writer_closed"


# --- envelope keys ---------------------------------------------------------------------------------


class MalformedWrappedKey(VaultError):
    """Bytes given as a wrapped data key do not parse as one."""

    code = "malformed_wrapped_key"


class UnwrapFailed(VaultError):
    """A wrapped key does not open: wrong region or request ID (C3), wrong bucket, or tampered bytes."""

    code = "unwrap_failed"


class KeyUnavailable(VaultError):
    """The key-encryption key of a bucket cannot be used."""

    code = "key_unavailable"

    def __init__(self, message: str, *, region: str, hour: datetime) -> None:
        super().__init__(f"{message} (region {region}, hour {hour:%Y-%m-%dT%H}Z)")
        self.region = region
        self.hour = hour


class KeyNotFound(KeyUnavailable):
    """No KEK was ever made for this bucket here."""

    code = "key_not_found"


class KeyDestroyed(KeyUnavailable):
    """The bucket's KEK was destroyed, the bucket is past its lifetime, or this recording's key was erased (C7)."""

    code = "key_destroyed"


class UnknownRegion(VaultError):
    """No keyring is configured for the region (C3: keys never leave their region's key service)."""

    code = "unknown_region"


class KeyServiceError(VaultError):
    """The key service failed or refused a request (network, throttling, permissions)."""

    code = "key_service_error"
