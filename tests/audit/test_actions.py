"""Every action has a closed detail schema: ids, counts and codes fit; content does not (C2, C6)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from app.audit.actions import (
    ACTION_SCHEMAS,
    Actor,
    AuditAction,
    FieldKind,
    InvalidAuditEntry,
    Subjects,
    detail_time,
    kek_bucket,
    validate_entry,
    without_absent,
)

NOW = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)


def test_every_action_has_a_schema_and_the_issue_list_is_covered() -> None:
    assert set(ACTION_SCHEMAS) == set(AuditAction)
    listed = {"ticket.created", "consent.granted", "consent.withdrawn", "recording.started",
              "recording.sealed-summary", "recording.incomplete", "access.requested", "access.approved",
              "access.denied", "access.expired", "access.revoked", "recording.read", "recording.purged",
              "key.destroyed", "saw.registered", "saw.revoked", "staff.changed", "admin.changed",
              "checkpoint.signed", "resource.created", "resource.deleted"}
    assert listed <= {a.value for a in AuditAction}


def test_no_schema_lets_free_text_grow_beyond_a_short_field() -> None:
    for action, schema in ACTION_SCHEMAS.items():
        for name, spec in schema.fields.items():
            limit = 1000 if (action, name) == (AuditAction.ACCESS_REQUESTED, "justification") else 128
            assert spec.kind is not FieldKind.TEXT or spec.max_length <= limit, (action, name)


def _valid_example(action: AuditAction) -> tuple[Subjects, dict[str, object]]:
    schema = ACTION_SCHEMAS[action]
    subjects = Subjects(**{name: f"{name}-1" for name in schema.subjects})
    detail: dict[str, object] = {}
    for name, spec in schema.fields.items():
        if not spec.required:
            continue
        if spec.kind is FieldKind.INT:
            detail[name] = 1
        elif spec.kind is FieldKind.BOOL:
            detail[name] = True
        elif spec.kind is FieldKind.TIME:
            detail[name] = detail_time(NOW)
        elif spec.kind is FieldKind.ID_LIST:
            detail[name] = ["req-1"]
        elif spec.choices:
            detail[name] = sorted(spec.choices)[0]
        elif spec.pattern is not None:
            detail[name] = kek_bucket(NOW)
        else:
            detail[name] = "x"
    return subjects, detail


@pytest.mark.parametrize("action", list(AuditAction))
def test_each_action_accepts_its_minimal_entry_and_refuses_an_unknown_key(action: AuditAction) -> None:
    subjects, detail = _valid_example(action)
    validate_entry(action, Actor.system(), subjects, detail)  # type: ignore[arg-type]
    with pytest.raises(InvalidAuditEntry, match="not in its schema"):
        validate_entry(action, Actor.system(), subjects, {**detail, "frame": "AAAA"})  # type: ignore[dict-item]


def test_types_sizes_and_forms_are_checked() -> None:
    actor, subjects = Actor.staff("alice"), Subjects(request_id="r", grant="g", saw="s")
    ok = {"bytes": 10, "part": "audio_inbound"}
    validate_entry(AuditAction.RECORDING_READ, actor, subjects, ok)
    for bad in ({**ok, "bytes": -1}, {**ok, "bytes": True}, {**ok, "bytes": "10"}, {**ok, "part": "everything"},
                {**ok, "device": "x" * 129}, {**ok, "device": "line\nbreak"}):
        with pytest.raises(InvalidAuditEntry):
            validate_entry(AuditAction.RECORDING_READ, actor, subjects, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidAuditEntry, match="UTC time"):
        validate_entry(AuditAction.ACCESS_APPROVED, actor, Subjects(grant="g"),
                       {"requester": "a", "expires_at": "tomorrow"})
    with pytest.raises(InvalidAuditEntry, match="needs its `bucket`"):
        validate_entry(AuditAction.KEY_DESTROYED, actor, Subjects(), {"key_kind": "kek", "region": "eastus"})
    with pytest.raises(InvalidAuditEntry, match="printable id"):
        validate_entry(AuditAction.TICKET_CLOSED, Actor.staff("has space"), Subjects(ticket="t"), {})
    with pytest.raises(InvalidAuditEntry, match="subject `ticket`"):
        validate_entry(AuditAction.TICKET_CLOSED, actor, Subjects(ticket="t" * 129), {})


def test_none_means_absent_only_for_optional_fields() -> None:
    assert without_absent(AuditAction.TICKET_CREATED, {"external_ref": None}) == {}
    kept = without_absent(AuditAction.ADMIN_CHANGED, {"setting": None, "change": "set"})
    with pytest.raises(InvalidAuditEntry):
        validate_entry(AuditAction.ADMIN_CHANGED, Actor.staff("a"), Subjects(), kept)


def test_detail_times_and_buckets_have_one_form() -> None:
    assert detail_time(NOW) == "2030-03-04T10:00:00.000000Z"
    assert kek_bucket(NOW) == "2030-03-04T10"
    with pytest.raises(InvalidAuditEntry):
        detail_time(datetime(2030, 1, 1))  # naive


def test_docs_list_every_action_with_exactly_its_detail_keys() -> None:
    """docs/AUDIT.md is what emitting services follow: it must say what the code enforces."""
    import re
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "AUDIT.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z_.-]+)` \| [^|]+ \| (.+) \|$", docs, re.M)}
    for action, schema in ACTION_SCHEMAS.items():
        assert action.value in rows, action
        documented = {m.group(1): not m.group(2) for m in re.finditer(r"`(\w+)`(\??):", rows[action.value])}
        assert documented == {name: spec.required for name, spec in schema.fields.items()}, action


def test_a_trailing_newline_never_passes_an_anchored_form() -> None:
    """`^...$` with `.match` accepts "x\\n" (issue 15, finding 5): ids, times and buckets are full matches."""
    with pytest.raises(InvalidAuditEntry, match="printable id"):
        validate_entry(AuditAction.TICKET_CLOSED, Actor.staff("alice\n"), Subjects(ticket="t"), {})
    with pytest.raises(InvalidAuditEntry, match="subject `ticket`"):
        validate_entry(AuditAction.TICKET_CLOSED, Actor.staff("alice"), Subjects(ticket="t\n"), {})
    with pytest.raises(InvalidAuditEntry, match="UTC time"):
        validate_entry(AuditAction.ACCESS_APPROVED, Actor.staff("alice"), Subjects(grant="g"),
                       {"requester": "a", "expires_at": detail_time(NOW) + "\n"})
    with pytest.raises(InvalidAuditEntry):
        validate_entry(AuditAction.KEY_DESTROYED, Actor.staff("alice"), Subjects(),
                       {"key_kind": "kek", "region": "eastus", "bucket": kek_bucket(NOW) + "\n"})
