"""The live recording's lifecycle on its own: every (phase, event) and (row state, row event) pair, and
random event sequences."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.capture.lifecycle import (
    APPENDS,
    ENDED,
    GIVEN_UP,
    OWNS_ROW,
    ROW_TRANSITIONS,
    TAKES_FRAMES,
    TRANSITIONS,
    Backoff,
    Event,
    InvalidTransition,
    Phase,
    RowEvent,
    RowState,
    next_phase,
    next_row_state,
)

P, E = Phase, Event
LIVE = frozenset(Phase) - GIVEN_UP - ENDED

# The whole table, written out once more by hand: a change to the lifecycle must change both.
EXPECTED: dict[tuple[Phase, Event], Phase] = {
    (P.NEEDS_KEY, E.KEY_MADE): P.NEEDS_ROW,
    (P.NEEDS_KEY, E.ABANDON): P.ABANDONED_BEFORE_ROW,
    (P.NEEDS_ROW, E.ROW_WRITTEN): P.NEEDS_BLOB,
    (P.NEEDS_ROW, E.ROW_DEFERRED): P.NEEDS_BLOB,
    (P.NEEDS_ROW, E.CONSENT_ENDED): P.DISCARDING,
    (P.NEEDS_ROW, E.ABANDON): P.ABANDONED_BEFORE_ROW,
    (P.NEEDS_BLOB, E.BLOB_CREATED): P.STREAMING,
    (P.NEEDS_BLOB, E.ABANDON): P.ABANDONED,
    (P.NEEDS_BLOB, E.CONSENT_ENDED): P.DISCARDING,
    (P.STREAMING, E.LAST_SEGMENT_SEALED): P.FINAL_SEALED,
    (P.STREAMING, E.ABANDON): P.ABANDONED,
    (P.STREAMING, E.CONSENT_ENDED): P.DISCARDING,
    (P.FINAL_SEALED, E.FINISHED): P.COMPLETE,
    (P.FINAL_SEALED, E.ABANDON): P.ABANDONED,
    (P.FINAL_SEALED, E.CONSENT_ENDED): P.DISCARDING,
    (P.ABANDONED_BEFORE_ROW, E.KEY_MADE): P.ABANDONED_BEFORE_ROW,
    (P.ABANDONED_BEFORE_ROW, E.ROW_WRITTEN): P.ABANDONED,
    (P.ABANDONED_BEFORE_ROW, E.ROW_DEFERRED): P.ABANDONED_BEFORE_ROW,
    (P.ABANDONED_BEFORE_ROW, E.CONSENT_ENDED): P.DISCARDING,
    (P.ABANDONED_BEFORE_ROW, E.ABANDON): P.ABANDONED_BEFORE_ROW,
    (P.ABANDONED_BEFORE_ROW, E.RELEASED): P.INCOMPLETE,
    (P.ABANDONED, E.BLOB_CREATED): P.ABANDONED,
    (P.ABANDONED, E.LAST_SEGMENT_SEALED): P.ABANDONED,
    (P.ABANDONED, E.ABANDON): P.ABANDONED,
    (P.ABANDONED, E.RELEASED): P.INCOMPLETE,
    (P.DISCARDING, E.ABANDON): P.DISCARDING,
    (P.DISCARDING, E.BLOB_CREATED): P.DISCARDING,
    (P.DISCARDING, E.LAST_SEGMENT_SEALED): P.DISCARDING,
    (P.DISCARDING, E.CONSENT_ENDED): P.DISCARDING,
    (P.DISCARDING, E.RELEASED): P.DISCARDED,
}


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(Phase, Event)))
def test_every_phase_and_event_has_the_expected_outcome(phase: Phase, event: Event) -> None:
    expected = EXPECTED.get((phase, event))
    if expected is None:
        with pytest.raises(InvalidTransition) as refused:
            next_phase(phase, event)
        assert (refused.value.state, refused.value.event) == (phase, event)
        assert str(phase) in str(refused.value)
        assert "phase" in str(refused.value)
    else:
        assert next_phase(phase, event) is expected


def test_the_table_names_every_phase_and_nothing_else() -> None:
    assert set(TRANSITIONS) == set(Phase)
    assert {(p, e) for p, row in TRANSITIONS.items() for e in row} == set(EXPECTED)


def test_the_happy_path_is_one_line() -> None:
    phase = P.NEEDS_KEY
    seen = [phase]
    for event in (E.KEY_MADE, E.ROW_WRITTEN, E.BLOB_CREATED, E.LAST_SEGMENT_SEALED, E.FINISHED):
        phase = next_phase(phase, event)
        seen.append(phase)
    assert seen == [P.NEEDS_KEY, P.NEEDS_ROW, P.NEEDS_BLOB, P.STREAMING, P.FINAL_SEALED, P.COMPLETE]


def test_every_live_phase_can_be_abandoned_and_every_abandon_can_be_released() -> None:
    for phase in LIVE | GIVEN_UP:
        abandoned = next_phase(phase, E.ABANDON)
        assert abandoned in GIVEN_UP
        assert next_phase(abandoned, E.RELEASED) in ENDED


def test_the_phase_groups_agree_with_the_table() -> None:
    assert LIVE - {P.FINAL_SEALED} == TAKES_FRAMES  # the final seal needs the session's end: no frame follows
    assert {P.NEEDS_BLOB, P.STREAMING, P.FINAL_SEALED} == OWNS_ROW
    assert APPENDS <= OWNS_ROW
    assert not (GIVEN_UP & (TAKES_FRAMES | OWNS_ROW | APPENDS))
    assert all(TRANSITIONS[p] == {} for p in ENDED)
    assert all(TRANSITIONS[p] != {} for p in Phase if p not in ENDED)


def reachable_from(start: Phase) -> set[Phase]:
    seen, todo = {start}, [start]
    while todo:
        for following in TRANSITIONS[todo.pop()].values():
            if following not in seen:
                seen.add(following)
                todo.append(following)
    return seen


def test_every_phase_is_reachable_and_every_phase_can_end() -> None:
    assert reachable_from(P.NEEDS_KEY) == set(Phase)
    assert all(reachable_from(p) & ENDED for p in Phase)


def test_nothing_is_stored_once_the_consent_was_found_ended() -> None:
    """C1: from `discarding` no phase that writes (or owns) a row, a blob or a segment is reachable."""
    assert reachable_from(P.DISCARDING) == {P.DISCARDING, P.DISCARDED}


def run(events: list[Event]) -> tuple[list[Phase], list[Event]]:
    """Apply `events` from the opening phase, skipping the ones refused; (phases after each, accepted)."""
    phase, phases, accepted = P.NEEDS_KEY, [], []
    for event in events:
        try:
            phase = next_phase(phase, event)
        except InvalidTransition:
            continue
        phases.append(phase)
        accepted.append(event)
    return phases, accepted


events = st.lists(st.sampled_from(Event), max_size=40)


@given(events)
def test_a_terminal_phase_stays_terminal_and_refuses_every_event(sequence: list[Event]) -> None:
    phases, _ = run(sequence)
    for i, phase in enumerate(phases):
        if phase in ENDED:
            assert phases[i:] == [phase] * (len(phases) - i)
            for event in Event:
                with pytest.raises(InvalidTransition):
                    next_phase(phase, event)


@given(events)
def test_after_abandon_nothing_new_is_written_and_no_frame_is_taken(sequence: list[Event]) -> None:
    """Once abandoned, the recording never again reaches a phase that takes frames, starts a write or
    heartbeats its row; it only finishes (C1 on erasure, C8 on giving up)."""
    phases, accepted = run(sequence)
    if E.ABANDON not in accepted:
        return
    after = phases[accepted.index(E.ABANDON):]
    assert all(p in GIVEN_UP | ENDED for p in after)
    assert not any(p in TAKES_FRAMES | OWNS_ROW | APPENDS for p in after)


@given(events)
def test_complete_needs_the_whole_path_in_order(sequence: list[Event]) -> None:
    phases, accepted = run(sequence)
    if P.COMPLETE not in phases:
        return
    done = accepted[: phases.index(P.COMPLETE) + 1]
    row = E.ROW_DEFERRED if E.ROW_DEFERRED in done else E.ROW_WRITTEN  # a deferred row is written beside
    assert done == [E.KEY_MADE, row, E.BLOB_CREATED, E.LAST_SEGMENT_SEALED, E.FINISHED]


@given(events)
def test_discarded_means_the_consent_check_said_no(sequence: list[Event]) -> None:
    """Only the row's consent check discards: at the row (nothing stored) or at a deferred row's late
    check (what was stored is deleted); the recorder applies it past `needs_row` to deferred rows only."""
    phases, accepted = run(sequence)
    if P.DISCARDED not in phases:
        return
    assert E.CONSENT_ENDED in accepted
    assert E.FINISHED not in accepted


@given(events)
def test_a_recording_given_up_after_its_row_is_closed_incomplete(sequence: list[Event]) -> None:
    """A row that exists when the recording is given up is closed (`abandoned`), never left for recovery."""
    phases, accepted = run(sequence)
    for i, event in enumerate(accepted):
        before = phases[i - 1] if i else P.NEEDS_KEY
        if event is E.ABANDON and before in OWNS_ROW:
            assert phases[i] is P.ABANDONED


R, RE = RowState, RowEvent

# The row's table, written out once more by hand too.
EXPECTED_ROW: dict[tuple[RowState, RowEvent], RowState] = {
    (R.NOT_WRITTEN, RE.WRITTEN): R.WRITTEN,
    (R.NOT_WRITTEN, RE.DEFERRED): R.DEFERRED,
    (R.DEFERRED, RE.DEFERRED_WRITTEN): R.WRITTEN,
    (R.DEFERRED, RE.REFUSED): R.REFUSED,
}
ROW_ENDED = frozenset({R.WRITTEN, R.REFUSED})


@pytest.mark.parametrize(("row", "event"), list(itertools.product(RowState, RowEvent)))
def test_every_row_state_and_row_event_has_the_expected_outcome(row: RowState, event: RowEvent) -> None:
    expected = EXPECTED_ROW.get((row, event))
    if expected is None:
        with pytest.raises(InvalidTransition) as refused:
            next_row_state(row, event)
        assert (refused.value.state, refused.value.event) == (row, event)
        assert f"row state {row}" in str(refused.value)
    else:
        assert next_row_state(row, event) is expected


def test_the_row_table_names_every_row_state_and_nothing_else() -> None:
    assert set(ROW_TRANSITIONS) == set(RowState)
    assert {(r, e) for r, row in ROW_TRANSITIONS.items() for e in row} == set(EXPECTED_ROW)
    assert {r for r in RowState if ROW_TRANSITIONS[r] == {}} == ROW_ENDED


def test_a_row_is_written_at_its_step_or_deferred_and_written_by_the_upkeep() -> None:
    assert next_row_state(R.NOT_WRITTEN, RE.WRITTEN) is R.WRITTEN
    deferred = next_row_state(R.NOT_WRITTEN, RE.DEFERRED)
    assert next_row_state(deferred, RE.DEFERRED_WRITTEN) is R.WRITTEN


def test_only_a_deferred_row_can_be_refused_and_a_refused_row_is_never_written() -> None:
    """C1: `refused` means something was stored under a deferred row; it is deleted, and no row follows."""
    assert [r for r in RowState if RE.REFUSED in ROW_TRANSITIONS[r]] == [R.DEFERRED]
    for event in RowEvent:
        with pytest.raises(InvalidTransition):
            next_row_state(R.REFUSED, event)


@given(st.lists(st.sampled_from(RowEvent), max_size=12))
def test_a_row_is_written_at_most_once_and_its_end_is_final(sequence: list[RowEvent]) -> None:
    row, accepted = R.NOT_WRITTEN, []
    for event in sequence:
        try:
            row = next_row_state(row, event)
        except InvalidTransition:
            continue
        accepted.append(event)
    assert len(accepted) <= 2
    assert sum(e in (RE.WRITTEN, RE.DEFERRED_WRITTEN) for e in accepted) <= 1
    assert accepted in ([], [RE.WRITTEN], [RE.DEFERRED], [RE.DEFERRED, RE.DEFERRED_WRITTEN],
                        [RE.DEFERRED, RE.REFUSED])


def test_backoff_doubles_from_a_quarter_second_to_five_and_gives_up_at_the_deadline() -> None:
    backoff = Backoff()
    pauses, gave_up = [], []
    for now in (100.0, 100.5, 101.0, 102.0, 104.0, 108.0, 113.0, 118.0):
        gave_up.append(backoff.failed(now, deadline_s=15.0))
        pauses.append(backoff.pause_s)
        assert backoff.next_try == now + backoff.pause_s
    assert pauses == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert gave_up == [False] * 7 + [True]  # 118 - 100 >= 15
    backoff.succeeded()
    assert (backoff.failing_since, backoff.pause_s) == (None, 0.0)
    assert backoff.failed(200.0, deadline_s=15.0) is False  # the deadline counts from the first new failure
    assert backoff.pause_s == 0.25
