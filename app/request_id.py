"""The request ID: one per relayed session, made by the server, never taken from a client.

One rule: exactly 32 lower-case hex digits (128 random bits). It names the session in logs and headers,
the recording row, the stored blob, the envelope's key derivation and every audit entry about it.

`RequestId` is a `NewType` over `str`: free at run time (the relay makes one per session, and rows and
paths already hold `str`), while mypy keeps an unchecked string from standing in for one. The only ways
to get one are `new_request_id()` (mint) and `parse_request_id()` / `is_request_id()` (check a string
from a client, a path or a row). This module imports only the standard library.
"""

from __future__ import annotations

import re
import secrets
from typing import Final, NewType, TypeGuard

RequestId = NewType("RequestId", str)

PATTERN: Final = re.compile(r"[0-9a-f]{32}")
"""The one shape, always used with `fullmatch` (so no trailing newline, no upper case)."""

STORED_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{7,127}")
"""What storage accepts as the last segment of an object name: every request ID, and the wider
URL-safe shape names were checked against before this module, so anything stored under it still reads.
No dots (part suffixes stay unambiguous), no slash, no leading `-` or `_`."""


class InvalidRequestId(ValueError):
    """A string that is not exactly 32 lower-case hex digits."""


def new_request_id() -> RequestId:
    """128 random bits as 32 lower-case hex digits, made by the server (never taken from the client).

    Hex rather than base64url: it never starts with `-` or `_`, so it is a safe blob and file name.
    """
    return RequestId(secrets.token_hex(16))


def is_request_id(text: object) -> TypeGuard[RequestId]:
    """True only for exactly 32 lower-case hex digits."""
    return isinstance(text, str) and PATTERN.fullmatch(text) is not None


def parse_request_id(text: object) -> RequestId:
    """`text` as a RequestId; InvalidRequestId for anything else (the message never echoes the input)."""
    if not is_request_id(text):
        raise InvalidRequestId("request_id must be 32 lower-case hex digits")
    return text


def is_stored_name(text: str) -> bool:
    """True for a name storage may hold a recording under (`STORED_NAME`, which every RequestId matches)."""
    return STORED_NAME.fullmatch(text) is not None
