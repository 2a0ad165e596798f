"""grant_situation: each derived state from its facts, and its links agree with the read policy.

The property ties the two pure functions together: whatever the row, the customer's verdict, the recording
(shredded, past its 30 days, another ticket's) and its consent, a named recording is linked exactly when
`decide_read` allows it for the requester on their SAW with a present manager and a present assignment.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from app.access.grant_status import (
    GrantRecord,
    GrantSituation,
    GrantStatus,
    ItemState,
    RecordingFacts,
    grant_situation,
    needs_facts,
)
from app.access.policy import ConsentView, GrantView, RecordingView, SawView, StaffView, decide_read
from app.access.states import AccessRequestState

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
RID, RID2 = "0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"
THIRTY_DAYS = timedelta(days=30)

GRANT = GrantRecord(id="g-1", ticket_id="T1", state=AccessRequestState.APPROVED, created_at=NOW - timedelta(hours=1),
                    expires_at=NOW + timedelta(hours=1), revoked=False, needs_customer_approval=False,
                    customer_approved=None, request_ids=(RID,))
RECORDING = RecordingFacts(request_id=RID, ticket_id="T1", started_at=NOW - timedelta(days=2), bucket_start=None,
                           shredded=False, consent_ticket_id="T1", consent_ended=False)


def situation(grant: GrantRecord = GRANT, recordings: dict[str, RecordingFacts] | None = None,
              ticket_open: bool = True) -> GrantSituation:
    return grant_situation(now=NOW, grant=grant, recordings={RID: RECORDING} if recordings is None else recordings,
                           ticket_open=ticket_open, retention=THIRTY_DAYS)


def test_a_pending_request_waits_for_the_manager() -> None:
    found = situation(replace(GRANT, state=AccessRequestState.PENDING, expires_at=None))
    assert (found.status, found.readable) == (GrantStatus.WAITING_FOR_MANAGER, frozenset())
    assert found.status.label == "waiting for manager"


def test_a_lockbox_grant_the_manager_approved_waits_for_the_customer_and_links_nothing() -> None:
    found = situation(replace(GRANT, needs_customer_approval=True))
    assert (found.status, found.until, found.readable) == (GrantStatus.WAITING_FOR_CUSTOMER, GRANT.expires_at,
                                                           frozenset())
    assert found.status.label == "waiting for customer"


def test_the_customer_approval_makes_it_approved_until_its_end() -> None:
    found = situation(replace(GRANT, needs_customer_approval=True, customer_approved=True))
    assert (found.status, found.until, found.readable) == (GrantStatus.APPROVED, GRANT.expires_at, {RID})


def test_a_customer_refusal_is_denied_by_the_customer_even_once_it_expired() -> None:
    for state in (AccessRequestState.APPROVED, AccessRequestState.EXPIRED):
        found = situation(replace(GRANT, state=state, needs_customer_approval=True, customer_approved=False))
        assert (found.status, found.denied_by_customer, found.readable) == (GrantStatus.DENIED, True, frozenset())


def test_the_row_ends_first_whatever_the_recordings() -> None:
    gone = {RID: replace(RECORDING, shredded=True)}
    cases: list[tuple[dict[str, Any], GrantStatus]] = [
        ({"state": AccessRequestState.REVOKED, "revoked": True}, GrantStatus.REVOKED),
        ({"state": AccessRequestState.DENIED}, GrantStatus.DENIED),
        ({"state": AccessRequestState.LAPSED}, GrantStatus.LAPSED),
        ({"state": AccessRequestState.PENDING, "created_at": NOW - timedelta(hours=24)}, GrantStatus.LAPSED),
        ({"state": AccessRequestState.EXPIRED}, GrantStatus.EXPIRED),
        ({"expires_at": NOW}, GrantStatus.EXPIRED),  # the scheduler has not marked it yet
    ]
    for changes, status in cases:
        grant = replace(GRANT, **changes)
        assert not needs_facts(grant, NOW)
        assert situation(grant, gone).status == status, changes


def test_an_erased_recording_is_recording_erased_and_never_linked() -> None:
    too_old = NOW - THIRTY_DAYS - timedelta(hours=1)
    for gone in (replace(RECORDING, shredded=True), replace(RECORDING, started_at=too_old)):
        found = situation(recordings={RID: gone})
        assert (found.status, found.items, found.readable) == (GrantStatus.RECORDING_ERASED, {RID: ItemState.ERASED},
                                                               frozenset())


def test_one_erased_recording_of_two_leaves_the_other_linked() -> None:
    grant = replace(GRANT, request_ids=(RID, RID2))
    found = situation(grant, {RID: replace(RECORDING, shredded=True), RID2: replace(RECORDING, request_id=RID2)})
    assert (found.status, found.readable) == (GrantStatus.APPROVED, {RID2})
    assert found.items[RID] == ItemState.ERASED


def test_a_withdrawn_consent_or_a_closed_ticket_is_consent_ended() -> None:
    assert situation(recordings={RID: replace(RECORDING, consent_ended=True)}).status == GrantStatus.CONSENT_ENDED
    assert situation(ticket_open=False).status == GrantStatus.CONSENT_ENDED
    other = situation(recordings={RID: replace(RECORDING, ticket_id="T0", consent_ticket_id="T0")})
    assert (other.status, other.items[RID]) == (GrantStatus.CONSENT_ENDED, ItemState.OTHER_TICKET)


def test_a_pending_request_for_an_erased_recording_is_recording_erased() -> None:
    found = situation(replace(GRANT, state=AccessRequestState.PENDING, expires_at=None),
                      {RID: replace(RECORDING, shredded=True)})
    assert found.status == GrantStatus.RECORDING_ERASED


STATES = st.sampled_from(list(AccessRequestState))
OFFSETS = st.sampled_from([timedelta(hours=-30), timedelta(minutes=-1), timedelta(0), timedelta(minutes=1),
                           timedelta(hours=2)])


@given(state=STATES, expires=st.one_of(st.none(), OFFSETS), created=OFFSETS, revoked=st.booleans(),
       lockbox=st.booleans(), verdict=st.sampled_from([None, True, False]), shredded=st.booleans(),
       age=st.sampled_from([timedelta(days=1), timedelta(days=31)]), recorded_under=st.sampled_from(["T1", "T0"]),
       consent_ended=st.booleans(), ticket_open=st.booleans())
def test_a_recording_is_linked_exactly_when_the_read_policy_allows_it(
    state: AccessRequestState, expires: timedelta | None, created: timedelta, revoked: bool, lockbox: bool,
    verdict: bool | None, shredded: bool, age: timedelta, recorded_under: str, consent_ended: bool,
    ticket_open: bool,
) -> None:
    grant = GrantRecord(id="g-1", ticket_id="T1", state=state, created_at=NOW + created - timedelta(hours=1),
                        expires_at=NOW + expires if expires is not None else None, revoked=revoked,
                        needs_customer_approval=lockbox, customer_approved=verdict, request_ids=(RID,))
    recording = RecordingFacts(request_id=RID, ticket_id=recorded_under, started_at=NOW - age, bucket_start=None,
                               shredded=shredded, consent_ticket_id=recorded_under, consent_ended=consent_ended)
    found = grant_situation(now=NOW, grant=grant, recordings={RID: recording}, ticket_open=ticket_open,
                            retention=THIRTY_DAYS)
    decision = decide_read(
        now=NOW, request_id=RID, retention=THIRTY_DAYS,
        actor=StaffView("alice", active=True, is_engineer=True, team_id="t1", team_managers=frozenset({"mona"}),
                        assigned_tickets=frozenset({"T1"})),
        saw=SawView("saw-1", owner_subject="alice", revoked=False),
        grant=GrantView("g-1", requester="alice", ticket_id="T1", request_ids=frozenset({RID}), state=state,
                        approved_by="mona" if state != AccessRequestState.PENDING else None,
                        approver_was_manager=state != AccessRequestState.PENDING, expires_at=grant.expires_at,
                        revoked=revoked, needs_customer_approval=lockbox, customer_approved=bool(verdict)),
        recording=RecordingView(RID, ticket_id=recorded_under, started_at=recording.started_at, shredded=shredded),
        consent=ConsentView(ticket_id=recorded_under, ended=consent_ended, ticket_open=ticket_open),
    )
    assert (RID in found.readable) == decision.allowed
    assert (found.status == GrantStatus.APPROVED) == decision.allowed  # one recording: the state says it all
