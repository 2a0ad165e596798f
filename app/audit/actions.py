"""What an audit entry says: who (Actor), did what (AuditAction), to which ids (Subjects), with which detail.

Every action has a closed detail schema (`ACTION_SCHEMAS`): the keys it must and may carry, their types and
sizes. Unknown keys, floats and long strings are refused, so a detail can carry ids, counts and codes but
never session content (C2). docs/AUDIT.md lists the same schemas for the services that emit them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final, TypeAlias

from app.errors import AppError

JSONValue: TypeAlias = str | int | bool | Sequence["JSONValue"] | Mapping[str, "JSONValue"] | None

MAX_ID_LENGTH: Final = 128
MAX_DETAIL_BYTES: Final = 4096
MAX_SAFE_INT: Final = 2**53 - 1
DETAIL_TIME_PATTERN: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
KEK_BUCKET_PATTERN: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}$")
ID_PATTERN: Final = re.compile(r"^[\x21-\x7e]{1,128}$")


class ActorType(StrEnum):
    STAFF = "staff"
    CUSTOMER_ADMIN = "customer_admin"
    SERVICE = "service"
    SYSTEM = "system"


@dataclass(frozen=True)
class Actor:
    """Who acted: a staff member (OIDC subject), a customer's admin, a service principal, or voicelog itself."""

    type: ActorType
    id: str

    @classmethod
    def staff(cls, staff_id: str) -> Actor:
        return cls(ActorType.STAFF, staff_id)

    @classmethod
    def customer_admin(cls, subject: str) -> Actor:
        return cls(ActorType.CUSTOMER_ADMIN, subject)

    @classmethod
    def service(cls, name: str) -> Actor:
        return cls(ActorType.SERVICE, name)

    @classmethod
    def system(cls, component: str = "voicelog") -> Actor:
        return cls(ActorType.SYSTEM, component)


@dataclass(frozen=True)
class Subjects:
    """The ids an entry is about. Ids only: never names, titles or content."""

    ticket: str | None = None
    request_id: str | None = None
    grant: str | None = None
    saw: str | None = None
    resource: str | None = None

    def present(self) -> frozenset[str]:
        return frozenset(name for name in SUBJECT_NAMES if getattr(self, name) is not None)


SUBJECT_NAMES: Final = ("ticket", "request_id", "grant", "saw", "resource")
NO_SUBJECTS: Final = Subjects()


class AuditAction(StrEnum):
    """The closed list of things that happen in voicelog (C6). Add a member and its schema together."""

    TICKET_CREATED = "ticket.created"
    TICKET_ASSIGNED = "ticket.assigned"
    TICKET_UNASSIGNED = "ticket.unassigned"
    TICKET_CLOSED = "ticket.closed"
    CONSENT_GRANTED = "consent.granted"
    CONSENT_WITHDRAWN = "consent.withdrawn"
    CONSENT_ERASURE_REQUESTED = "consent.erasure_requested"
    RECORDING_STARTED = "recording.started"
    RECORDING_SEALED_SUMMARY = "recording.sealed-summary"
    RECORDING_INCOMPLETE = "recording.incomplete"
    RECORDING_READ = "recording.read"
    RECORDING_READ_DENIED = "recording.read_denied"
    RECORDING_PURGED = "recording.purged"
    KEY_DESTROYED = "key.destroyed"
    ACCESS_REQUESTED = "access.requested"
    ACCESS_APPROVED = "access.approved"
    ACCESS_DENIED = "access.denied"
    ACCESS_EXPIRED = "access.expired"
    ACCESS_REVOKED = "access.revoked"
    SAW_REGISTERED = "saw.registered"
    SAW_REVOKED = "saw.revoked"
    STAFF_CHANGED = "staff.changed"
    ADMIN_CHANGED = "admin.changed"
    RESOURCE_CREATED = "resource.created"
    RESOURCE_DELETED = "resource.deleted"
    CHECKPOINT_SIGNED = "checkpoint.signed"
    SIGNING_KEY_ROTATED = "signing_key.rotated"
    REPORT_GENERATED = "report.generated"


class FieldKind(StrEnum):
    TEXT = "text"  # a short string: an id, a code, a name
    INT = "int"  # a non-negative integer (bytes, seconds, counts)
    BOOL = "bool"
    TIME = "time"  # UTC instant, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (see `detail_time`)
    ID_LIST = "id_list"  # a list of ids


@dataclass(frozen=True)
class DetailField:
    kind: FieldKind
    required: bool = True
    max_length: int = 128
    choices: frozenset[str] | None = None
    pattern: re.Pattern[str] | None = None
    max_items: int = 100


@dataclass(frozen=True)
class ActionSchema:
    subjects: frozenset[str] = frozenset()  # subject ids the entry must name
    fields: Mapping[str, DetailField] = field(default_factory=dict)


def _text(*, required: bool = True, max_length: int = 128, choices: set[str] | None = None,
          pattern: re.Pattern[str] | None = None) -> DetailField:
    return DetailField(FieldKind.TEXT, required, max_length, frozenset(choices) if choices else None, pattern)


def _int(*, required: bool = True) -> DetailField:
    return DetailField(FieldKind.INT, required)


def _time(*, required: bool = True) -> DetailField:
    return DetailField(FieldKind.TIME, required)


def _subjects(*names: str) -> frozenset[str]:
    return frozenset(names)


READ_PARTS: Final = {"audio_inbound", "audio_outbound", "audio_session", "timeline", "turns", "transcripts", "bundle",
                      "manifest"}
PURGE_REASONS: Final = {"retention", "erasure"}
KEY_KINDS: Final = {"kek", "dek"}
REPORT_KINDS: Final = {"access_review", "retention"}

ACTION_SCHEMAS: Final[Mapping[AuditAction, ActionSchema]] = {
    AuditAction.TICKET_CREATED: ActionSchema(_subjects("ticket"), {"external_ref": _text(required=False)}),
    AuditAction.TICKET_ASSIGNED: ActionSchema(_subjects("ticket"), {"engineer": _text()}),
    AuditAction.TICKET_UNASSIGNED: ActionSchema(_subjects("ticket"), {"engineer": _text()}),
    AuditAction.TICKET_CLOSED: ActionSchema(_subjects("ticket")),
    AuditAction.CONSENT_GRANTED: ActionSchema(
        _subjects("ticket", "resource"),
        {"consent": _text(), "not_before": _time(), "not_after": _time()},
    ),
    AuditAction.CONSENT_WITHDRAWN: ActionSchema(_subjects("ticket", "resource"), {"consent": _text()}),
    AuditAction.CONSENT_ERASURE_REQUESTED: ActionSchema(
        _subjects("resource"),
        {"consent": _text(required=False),
         "request_ids": DetailField(FieldKind.ID_LIST, required=False, max_items=1000)},
    ),
    AuditAction.RECORDING_STARTED: ActionSchema(
        _subjects("request_id", "resource", "ticket"),
        {"region": _text(max_length=32), "started_at": _time(),
         "kek_bucket": _text(pattern=KEK_BUCKET_PATTERN), "consent": _text(required=False)},
    ),
    AuditAction.RECORDING_SEALED_SUMMARY: ActionSchema(
        _subjects("request_id"),
        {"segments": _int(), "bytes": _int(), "frames": _int(required=False),
         "dropped_frames": _int(required=False), "duration_ms": _int(required=False),
         "complete": DetailField(FieldKind.BOOL, required=False)},
    ),
    AuditAction.RECORDING_INCOMPLETE: ActionSchema(
        _subjects("request_id"), {"reason": _text(max_length=64), "dropped_frames": _int(required=False)}
    ),
    AuditAction.RECORDING_READ: ActionSchema(
        _subjects("request_id", "grant", "saw"),
        {"bytes": _int(), "part": _text(choices=READ_PARTS), "device": _text(required=False)},
    ),
    AuditAction.RECORDING_READ_DENIED: ActionSchema(
        _subjects(), {"reason": _text(max_length=64), "part": _text(required=False, choices=READ_PARTS)}
    ),
    AuditAction.RECORDING_PURGED: ActionSchema(
        _subjects("request_id"),
        {"region": _text(max_length=32), "started_at": _time(), "age_s": _int(),
         "reason": _text(choices=PURGE_REASONS), "kek_bucket": _text(required=False, pattern=KEK_BUCKET_PATTERN)},
    ),
    AuditAction.KEY_DESTROYED: ActionSchema(
        _subjects(),
        {"key_kind": _text(choices=KEY_KINDS), "region": _text(max_length=32),
         "bucket": _text(required=False, pattern=KEK_BUCKET_PATTERN), "key_ref": _text(required=False)},
    ),
    AuditAction.ACCESS_REQUESTED: ActionSchema(
        _subjects("grant", "ticket"),
        {"request_ids": DetailField(FieldKind.ID_LIST), "justification": _text(max_length=1000),
         "duration_s": _int()},
    ),
    AuditAction.ACCESS_APPROVED: ActionSchema(
        _subjects("grant"),
        {"requester": _text(), "expires_at": _time(), "duration_s": _int(required=False)},
    ),
    AuditAction.ACCESS_DENIED: ActionSchema(
        _subjects("grant"), {"requester": _text(), "reason": _text(required=False, max_length=64)}
    ),
    AuditAction.ACCESS_EXPIRED: ActionSchema(_subjects("grant")),
    AuditAction.ACCESS_REVOKED: ActionSchema(_subjects("grant"), {"reason": _text(required=False, max_length=64)}),
    AuditAction.SAW_REGISTERED: ActionSchema(
        _subjects("saw"), {"owner": _text(), "device": _text(required=False)}
    ),
    AuditAction.SAW_REVOKED: ActionSchema(_subjects("saw"), {"reason": _text(required=False, max_length=64)}),
    AuditAction.STAFF_CHANGED: ActionSchema(
        _subjects(),
        {"staff": _text(), "change": _text(max_length=64), "role": _text(required=False, max_length=32),
         "team": _text(required=False)},
    ),
    AuditAction.ADMIN_CHANGED: ActionSchema(
        _subjects(), {"setting": _text(), "change": _text(max_length=64)}
    ),
    AuditAction.RESOURCE_CREATED: ActionSchema(
        _subjects("resource"),
        {"name": _text(max_length=64), "region": _text(max_length=32), "tenant": _text()},
    ),
    AuditAction.RESOURCE_DELETED: ActionSchema(_subjects("resource"), {"name": _text(max_length=64)}),
    AuditAction.CHECKPOINT_SIGNED: ActionSchema(_subjects(), {"checkpoint": _int(), "key_id": _text(max_length=64)}),
    AuditAction.SIGNING_KEY_ROTATED: ActionSchema(
        _subjects(), {"key_id": _text(max_length=64), "public_key": _text(max_length=64), "not_before": _time()}
    ),
    AuditAction.REPORT_GENERATED: ActionSchema(
        _subjects(),
        {"report": _text(choices=REPORT_KINDS), "period_from": _text(max_length=10),
         "period_to": _text(max_length=10), "head_seq": _int()},
    ),
}


class InvalidAuditEntry(AppError):
    """A programming error in the emitting service: the entry does not fit its action's schema."""

    status = 500
    code = "invalid_audit_entry"
    title = "An audit entry did not match its schema"


def detail_time(moment: datetime) -> str:
    """The one text form of an instant in a detail: UTC, microseconds, `Z`."""
    if moment.tzinfo is None:
        raise InvalidAuditEntry("naive datetime in an audit detail")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_detail_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def kek_bucket(moment: datetime) -> str:
    """The hour bucket a recording's KEK belongs to: `YYYY-MM-DDTHH` (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H")


def _check_field(action: AuditAction, name: str, spec: DetailField, value: JSONValue) -> None:
    where = f"{action.value}: detail `{name}`"
    if spec.kind is FieldKind.INT:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SAFE_INT:
            raise InvalidAuditEntry(f"{where} must be a non-negative integer")
    elif spec.kind is FieldKind.BOOL:
        if not isinstance(value, bool):
            raise InvalidAuditEntry(f"{where} must be a boolean")
    elif spec.kind is FieldKind.TIME:
        if not isinstance(value, str) or not DETAIL_TIME_PATTERN.fullmatch(value):
            raise InvalidAuditEntry(f"{where} must be a UTC time from detail_time()")
    elif spec.kind is FieldKind.ID_LIST:
        if not isinstance(value, list | tuple) or not value or len(value) > spec.max_items:
            raise InvalidAuditEntry(f"{where} must be a non-empty list of at most {spec.max_items} ids")
        for item in value:
            if not isinstance(item, str) or not ID_PATTERN.fullmatch(item):
                raise InvalidAuditEntry(f"{where} holds an item that is not an id")
    else:
        if not isinstance(value, str) or not value or len(value) > spec.max_length:
            raise InvalidAuditEntry(f"{where} must be a string of 1..{spec.max_length} characters")
        if spec.choices is not None and value not in spec.choices:
            raise InvalidAuditEntry(f"{where} must be one of {', '.join(sorted(spec.choices))}")
        if spec.pattern is not None and not spec.pattern.fullmatch(value):
            raise InvalidAuditEntry(f"{where} has the wrong form")
        if any(ord(c) < 0x20 for c in value):
            raise InvalidAuditEntry(f"{where} holds control characters")


def without_absent(action: AuditAction, detail: Mapping[str, JSONValue]) -> dict[str, JSONValue]:
    """None for an optional field means "not given": the key is left out of the stored detail."""
    fields = ACTION_SCHEMAS[action].fields if isinstance(action, AuditAction) else {}
    return {
        key: value for key, value in detail.items()
        if not (value is None and key in fields and not fields[key].required)
    }


def validate_entry(
    action: AuditAction, actor: Actor, subjects: Subjects, detail: Mapping[str, JSONValue]
) -> None:
    """Raise InvalidAuditEntry unless the entry fits its action's schema (keys, types, sizes, subjects)."""
    if not isinstance(action, AuditAction):
        raise InvalidAuditEntry(f"unknown audit action {action!r}")
    if not isinstance(actor.type, ActorType) or not ID_PATTERN.fullmatch(actor.id):
        raise InvalidAuditEntry("the actor needs a type and a printable id of at most 128 characters")
    schema = ACTION_SCHEMAS[action]
    for name in SUBJECT_NAMES:
        value = getattr(subjects, name)
        if value is not None and not ID_PATTERN.fullmatch(value):
            raise InvalidAuditEntry(f"{action.value}: subject `{name}` is not a printable id of <= 128 chars")
    missing_subjects = schema.subjects - subjects.present()
    if missing_subjects:
        raise InvalidAuditEntry(f"{action.value}: missing subjects {', '.join(sorted(missing_subjects))}")
    unknown = set(detail) - set(schema.fields)
    if unknown:
        raise InvalidAuditEntry(f"{action.value}: detail keys not in its schema: {', '.join(sorted(unknown))}")
    for name, spec in schema.fields.items():
        if name not in detail:
            if spec.required:
                raise InvalidAuditEntry(f"{action.value}: detail `{name}` is required")
            continue
        _check_field(action, name, spec, detail[name])
    if action is AuditAction.KEY_DESTROYED and detail.get("key_kind") == "kek" and "bucket" not in detail:
        raise InvalidAuditEntry("key.destroyed: a KEK needs its `bucket`")
