"""Helpers for building sealed streams in tests (not fixtures: plain functions)."""

from __future__ import annotations

from app.vault.datakey import DataKey
from app.vault.segments import SegmentWriter

REGION = "eastus"
REQUEST_ID = "Xq3vN0b1T2r5aUeZkJmP8w"


def seal_stream(
    dek: DataKey, plaintexts: list[bytes], *, final: bool = True, region: str = REGION, request_id: str = REQUEST_ID
) -> tuple[bytes, list[bytes]]:
    """(whole stream, [header, segment 0, segment 1, ...]) with the last plaintext sealed as final."""
    writer = SegmentWriter(dek, region=region, request_id=request_id)
    parts = [writer.header]
    for i, plaintext in enumerate(plaintexts):
        parts.append(bytes(writer.seal(plaintext, final=final and i == len(plaintexts) - 1)))
    return b"".join(parts), parts
