"""decide_read: every C5 condition, separately false, denies; all true allows."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.access.policy import (
    ConsentView,
    DenyReason,
    GrantView,
    RecordingView,
    SawView,
    StaffView,
    decide_read,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RID = "0123456789abcdef0123456789abcdef"
THIRTY_DAYS = timedelta(days=30)

ALICE = StaffView("alice", active=True, is_engineer=True, team_id="t1", team_managers=frozenset({"mona", "max"}),
                  assigned_tickets=frozenset({"T0", "T1"}))
SAW = SawView("saw-1", owner_subject="alice", revoked=False)
GRANT = GrantView("g-1", requester="alice", ticket_id="T1", request_ids=frozenset({RID}), state="approved",
                  approved_by="mona", approver_was_manager=True, expires_at=NOW + timedelta(hours=2),
                  revoked=False, needs_customer_approval=False, customer_approved=False)
RECORDING = RecordingView(RID, ticket_id="T1", started_at=NOW - timedelta(days=2), shredded=False)
CONSENT = ConsentView(ticket_id="T1", ended=False, ticket_open=True)


def decide(**overrides: Any) -> tuple[bool, DenyReason | None]:
    values: dict[str, Any] = {"now": NOW, "actor": ALICE, "saw": SAW, "grant": GRANT, "recording": RECORDING,
                              "consent": CONSENT, "request_id": RID, "retention": THIRTY_DAYS}
    values.update(overrides)
    decision = decide_read(**values)
    return decision.allowed, decision.reason


def test_everything_in_place_allows() -> None:
    assert decide() == (True, None)


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"actor": None}, DenyReason.NOT_ENGINEER),
    ({"actor": replace(ALICE, active=False)}, DenyReason.NOT_ENGINEER),
    ({"actor": replace(ALICE, is_engineer=False)}, DenyReason.NOT_ENGINEER),
    ({"saw": None}, DenyReason.NO_SAW),
    ({"saw": replace(SAW, revoked=True)}, DenyReason.NO_SAW),
    ({"saw": replace(SAW, owner_subject="bob")}, DenyReason.NO_SAW),
    ({"recording": None}, DenyReason.NO_RECORDING),
    ({"recording": replace(RECORDING, shredded=True)}, DenyReason.RECORDING_GONE),
    ({"recording": replace(RECORDING, started_at=NOW - timedelta(days=30))}, DenyReason.RECORDING_EXPIRED),
    ({"grant": None}, DenyReason.NO_GRANT),
    ({"grant": replace(GRANT, requester="bob")}, DenyReason.GRANT_OTHER_PERSON),
    ({"grant": replace(GRANT, request_ids=frozenset({"f" * 32}))}, DenyReason.GRANT_OTHER_RECORDING),
    ({"grant": replace(GRANT, revoked=True)}, DenyReason.GRANT_REVOKED),
    ({"grant": replace(GRANT, state="pending")}, DenyReason.GRANT_NOT_APPROVED),
    ({"grant": replace(GRANT, state="denied")}, DenyReason.GRANT_NOT_APPROVED),
    ({"grant": replace(GRANT, approved_by=None)}, DenyReason.GRANT_NOT_APPROVED),
    ({"grant": replace(GRANT, approved_by="alice")}, DenyReason.SELF_APPROVED),
    ({"grant": replace(GRANT, approver_was_manager=False)}, DenyReason.APPROVER_NOT_MANAGER),
    ({"actor": replace(ALICE, team_managers=frozenset({"max"}))}, DenyReason.APPROVER_NOT_PRESENT_MANAGER),
    ({"actor": replace(ALICE, team_managers=frozenset())}, DenyReason.APPROVER_NOT_PRESENT_MANAGER),
    ({"grant": replace(GRANT, needs_customer_approval=True)}, DenyReason.CUSTOMER_APPROVAL_MISSING),
    ({"grant": replace(GRANT, expires_at=NOW)}, DenyReason.GRANT_EXPIRED),
    ({"grant": replace(GRANT, ticket_id="T2")}, DenyReason.TICKET_MISMATCH),
    ({"actor": replace(ALICE, assigned_tickets=frozenset({"T0"}))}, DenyReason.REQUESTER_NOT_ASSIGNED),
    ({"consent": None}, DenyReason.CONSENT_ENDED),
    ({"consent": replace(CONSENT, ended=True)}, DenyReason.CONSENT_ENDED),
    ({"consent": replace(CONSENT, ticket_id="T2")}, DenyReason.CONSENT_ENDED),
    ({"consent": replace(CONSENT, ticket_open=False)}, DenyReason.TICKET_CLOSED),
    ({"request_id": "f" * 32}, DenyReason.NO_RECORDING),
])
def test_each_condition_false_denies_with_its_reason(overrides: dict[str, Any], reason: DenyReason) -> None:
    assert decide(**overrides) == (False, reason)


def test_customer_approval_when_required_and_given_allows() -> None:
    assert decide(grant=replace(GRANT, needs_customer_approval=True, customer_approved=True)) == (True, None)


def test_a_recording_is_readable_until_its_bucket_turns_thirty_days() -> None:
    started = datetime(2026, 10, 29, 12, 59, tzinfo=UTC)  # bucket 2026-10-29T12, ends 2026-11-28T12:00
    recording = replace(RECORDING, started_at=started)
    assert decide(recording=recording, now=datetime(2026, 11, 28, 11, 59, 59, tzinfo=UTC))[0]
    assert decide(recording=recording, now=datetime(2026, 11, 28, 12, 0, tzinfo=UTC)) == (
        False, DenyReason.RECORDING_EXPIRED)


def test_engineer_unassigned_from_ticket_can_no_longer_read() -> None:
    """Finding 1: the grant was approved while she was on T1; today she is not, and the read is refused."""
    assert decide(actor=replace(ALICE, assigned_tickets=frozenset())) == (False, DenyReason.REQUESTER_NOT_ASSIGNED)


def test_grant_approved_by_old_teams_manager_stops_reading_after_a_team_move() -> None:
    """Finding 2: mona approved while alice was in t1; alice is now in t2, whose managers are others."""
    moved = replace(ALICE, team_id="t2", team_managers=frozenset({"nina"}))
    assert decide(actor=moved) == (False, DenyReason.APPROVER_NOT_PRESENT_MANAGER)


def test_approver_who_is_no_longer_a_manager_of_the_team_stops_the_grant() -> None:
    assert decide(actor=replace(ALICE, team_managers=frozenset({"max"}))) == (
        False, DenyReason.APPROVER_NOT_PRESENT_MANAGER)


def test_a_present_manager_who_is_the_requester_still_cannot_approve_herself() -> None:
    herself = replace(ALICE, team_managers=frozenset({"alice"}))
    assert decide(actor=herself, grant=replace(GRANT, approved_by="alice")) == (False, DenyReason.SELF_APPROVED)
