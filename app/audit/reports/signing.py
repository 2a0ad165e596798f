"""Signed reports: an envelope (kind, period, head, content hash) signed with the audit key, JSON or CSV.

JSON document:  {"envelope": {...}, "signature": {"key_id", "algorithm", "value"}, "report": {...}}
CSV:            the CSV bytes, with the envelope and signature beside them (HTTP headers or a .sig.json).
The signature covers "voicelog/audit/report/v1\\n" + canonical JSON of the envelope; the envelope holds the
SHA-256 of the content (canonical JSON of `report`, or the exact CSV bytes).
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.audit.actions import JSONValue, parse_detail_time
from app.audit.canonical import canonical_json, canonical_time, report_message
from app.audit.keys import ALGORITHM, PublicKeySet, SignatureCheck, SigningKey
from app.audit.service import ChainHead


@dataclass(frozen=True)
class SignedReport:
    envelope: dict[str, JSONValue]
    key_id: str
    signature: bytes
    content: bytes

    def signature_json(self) -> dict[str, JSONValue]:
        return {"key_id": self.key_id, "algorithm": ALGORITHM,
                "value": base64.b64encode(self.signature).decode()}

    def sidecar(self) -> dict[str, JSONValue]:
        """What travels beside CSV content: the envelope and its signature."""
        return {"envelope": self.envelope, "signature": self.signature_json()}


def sign_report(
    *,
    kind: str,
    fmt: str,
    content: bytes,
    period: Mapping[str, JSONValue],
    head: ChainHead,
    generated_at: datetime,
    key: SigningKey,
) -> SignedReport:
    envelope: dict[str, JSONValue] = {
        "v": 1,
        "kind": kind,
        "format": fmt,
        "period": dict(period),
        "generated_at": canonical_time(generated_at),
        "head": {"seq": head.seq, "hash": head.entry_hash},
        "content_sha256": hashlib.sha256(content).hexdigest(),
    }
    return SignedReport(envelope, key.key_id, key.sign(report_message(envelope)), content)


def json_document(report: Mapping[str, JSONValue], signed: SignedReport) -> dict[str, JSONValue]:
    return {"envelope": signed.envelope, "signature": signed.signature_json(), "report": dict(report)}


def report_content(report: Mapping[str, JSONValue]) -> bytes:
    """The bytes a JSON report's envelope hashes: its canonical JSON."""
    return canonical_json(report).encode()


@dataclass(frozen=True)
class ReportSignatureCheck:
    ok: bool
    reason: str
    head: ChainHead | None = None


def check_report_signature(
    envelope: Mapping[str, Any], signature: Mapping[str, Any], content: bytes, keys: PublicKeySet
) -> ReportSignatureCheck:
    """Signature valid for a key valid at `generated_at`, and the content is the one the envelope names."""
    try:
        value = base64.b64decode(str(signature["value"]), validate=True)
        key_id = str(signature["key_id"])
        generated_at = parse_detail_time(str(envelope["generated_at"]))
        head = ChainHead(int(envelope["head"]["seq"]), str(envelope["head"]["hash"]))
        message = report_message(dict(envelope))
    except (KeyError, TypeError, ValueError) as exc:
        return ReportSignatureCheck(False, f"malformed envelope or signature: {exc}")
    verdict = keys.check(key_id, message, value, generated_at)
    if verdict is not SignatureCheck.OK:
        return ReportSignatureCheck(False, verdict.value, head)
    if hashlib.sha256(content).hexdigest() != envelope.get("content_sha256"):
        return ReportSignatureCheck(False, "content_mismatch", head)
    return ReportSignatureCheck(True, "ok", head)


def to_csv(header: Sequence[str], rows: Sequence[Sequence[JSONValue]]) -> bytes:
    """RFC 4180 CSV (CRLF line ends); lists become space-joined cells, None an empty cell."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return buffer.getvalue().encode()


def _cell(value: JSONValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(_cell(v) for v in value)
    text = str(value)
    # A cell a spreadsheet would run as a formula is defused (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
