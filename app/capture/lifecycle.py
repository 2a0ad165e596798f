"""The live recording's lifecycle: two enums, each with one pure transition function, and the retry timer.

The phase says what the sealer must do next for a recording and whether it may still write (C1, C8):

    needs_key -> needs_row -> needs_blob -> streaming -> final_sealed -> complete
    needs_row --row_deferred--> needs_blob     (the database is away: the blob goes first, the row follows)
    any live phase --abandon--> abandoned_before_row | abandoned  --released--> incomplete
    needs_row --consent_ended--> discarding --released--> discarded   (nothing is ever stored)
    a deferred row's phase --consent_ended--> discarding                (what was stored is deleted)

The row's state (`RowState`) is a second, smaller machine beside the phase: where the recording's database
row is. The phase alone cannot say it, since with the database away the blob goes first and the row follows
while the phase moves on (docs/ARCHITECTURE.md, "Recording through a database outage"):

    not_written --written--> written                     (at needs_row, as a rule)
    not_written --deferred--> deferred --deferred_written--> written   (the upkeep, once the database is back)
                              deferred --refused--> refused          (its late consent check said no, C1)

A consent check that says no at `needs_row` moves only the phase (to `discarding`): the row stays
`not_written` and nothing was stored. The sealer reads both: a `final_sealed` recording closes its row
once `written`; a replica heartbeats the `written` rows of `OWNS_ROW` phases and the upkeep writes their
`deferred` ones; an `abandoned` recording inserts a `deferred` row incomplete instead of closing it; and a
`discarding` one deletes its blob only if its row was `refused` (what was stored under it).

The relay's end of the session is not a phase: it may come in any phase, and it is data (`EndRecord`)
that makes the next seal the last one. Retries are a timer (`Backoff`), not a phase: they decide when the
recorder gives up, and giving up is the `ABANDON` event.

Abandon happens beside the sealer (an erasure request), so an I/O the sealer had in flight may land after
it: such a late event is absorbed by the abandoned phase (a late row is remembered, so that it is closed
`incomplete`), and nothing new is started. A row closed `complete` while the abandon came in is not a
`FINISHED`: the abandon's own finish then finds nothing left to close. Any other (phase, event) pair is a
bug and raises; so does any (row state, row event) pair not drawn above.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Phase(StrEnum):
    NEEDS_KEY = "needs_key"  # opened under a consent: no data key yet
    NEEDS_ROW = "needs_row"  # data key made: the row and its `recording.started` entry not yet written
    NEEDS_BLOB = "needs_blob"  # row written or deferred: the blob and its header not yet stored
    STREAMING = "streaming"  # sealing segments from the buffer and appending them
    FINAL_SEALED = "final_sealed"  # the segment with the end record is sealed: append the rest, close the row
    ABANDONED_BEFORE_ROW = "abandoned_before_row"  # given up with no row: leave a keyless incomplete row
    ABANDONED = "abandoned"  # given up past the row step: close its row incomplete(reason), or insert it so
    DISCARDING = "discarding"  # the row's consent check said no: nothing more is stored, ever
    COMPLETE = "complete"  # the row was closed complete; the recorder forgot it
    INCOMPLETE = "incomplete"  # given up (the row says so if it could be written); forgotten
    DISCARDED = "discarded"  # nothing was stored; forgotten


class Event(StrEnum):
    KEY_MADE = "key_made"
    ROW_WRITTEN = "row_written"
    ROW_DEFERRED = "row_deferred"  # the database is away: stream to the blob now, write the row when it is back
    CONSENT_ENDED = "consent_ended"  # the row's consent check found it ended or erased (C1)
    BLOB_CREATED = "blob_created"
    LAST_SEGMENT_SEALED = "last_segment_sealed"
    FINISHED = "finished"  # the row was closed complete
    ABANDON = "abandon"  # retry deadline passed, a sealer bug, or the consent was erased
    RELEASED = "released"  # an abandoned recording's memory is freed and its row closed (best effort)


class RowState(StrEnum):
    NOT_WRITTEN = "not_written"  # its step has not written it yet, or the consent check said no (nothing stored)
    DEFERRED = "deferred"  # due while the database was away: the blob went first, the upkeep writes it later
    WRITTEN = "written"  # the row and its `recording.started` entry are committed
    REFUSED = "refused"  # a deferred row's consent check said no (C1): never written, what was stored is deleted


class RowEvent(StrEnum):
    WRITTEN = "written"  # the row step wrote it
    DEFERRED = "deferred"  # the row step found the database away
    DEFERRED_WRITTEN = "deferred_written"  # the upkeep wrote a deferred row once the database was back
    REFUSED = "refused"  # a deferred row's late consent check found the consent ended or erased


class InvalidTransition(RuntimeError):
    """A (phase, event) or (row state, row event) pair with no transition: a bug in the recorder."""

    def __init__(self, state: Phase | RowState, event: Event | RowEvent) -> None:
        kind = "phase" if isinstance(state, Phase) else "row state"
        super().__init__(f"recording {kind} {state} has no transition on {event}")
        self.state, self.event = state, event


_P, _E = Phase, Event

TRANSITIONS: Final[dict[Phase, dict[Event, Phase]]] = {
    _P.NEEDS_KEY: {_E.KEY_MADE: _P.NEEDS_ROW, _E.ABANDON: _P.ABANDONED_BEFORE_ROW},
    _P.NEEDS_ROW: {_E.ROW_WRITTEN: _P.NEEDS_BLOB, _E.ROW_DEFERRED: _P.NEEDS_BLOB,
                   _E.CONSENT_ENDED: _P.DISCARDING, _E.ABANDON: _P.ABANDONED_BEFORE_ROW},
    # CONSENT_ENDED below: a deferred row's late consent check (the database came back and said no).
    _P.NEEDS_BLOB: {_E.BLOB_CREATED: _P.STREAMING, _E.CONSENT_ENDED: _P.DISCARDING, _E.ABANDON: _P.ABANDONED},
    _P.STREAMING: {_E.LAST_SEGMENT_SEALED: _P.FINAL_SEALED, _E.CONSENT_ENDED: _P.DISCARDING,
                   _E.ABANDON: _P.ABANDONED},
    _P.FINAL_SEALED: {_E.FINISHED: _P.COMPLETE, _E.CONSENT_ENDED: _P.DISCARDING, _E.ABANDON: _P.ABANDONED},
    # Late landings of I/O that was in flight when the recording was abandoned:
    _P.ABANDONED_BEFORE_ROW: {_E.KEY_MADE: _P.ABANDONED_BEFORE_ROW, _E.ROW_WRITTEN: _P.ABANDONED,
                              _E.ROW_DEFERRED: _P.ABANDONED_BEFORE_ROW,
                              _E.CONSENT_ENDED: _P.DISCARDING, _E.ABANDON: _P.ABANDONED_BEFORE_ROW,
                              _E.RELEASED: _P.INCOMPLETE},
    _P.ABANDONED: {_E.BLOB_CREATED: _P.ABANDONED, _E.LAST_SEGMENT_SEALED: _P.ABANDONED,
                   _E.ABANDON: _P.ABANDONED, _E.RELEASED: _P.INCOMPLETE},
    # Late landings on a discarded recording: nothing more is stored, whatever lands.
    _P.DISCARDING: {_E.ABANDON: _P.DISCARDING, _E.BLOB_CREATED: _P.DISCARDING,
                    _E.LAST_SEGMENT_SEALED: _P.DISCARDING, _E.CONSENT_ENDED: _P.DISCARDING,
                    _E.RELEASED: _P.DISCARDED},
    _P.COMPLETE: {},
    _P.INCOMPLETE: {},
    _P.DISCARDED: {},
}

TAKES_FRAMES: Final = frozenset({Phase.NEEDS_KEY, Phase.NEEDS_ROW, Phase.NEEDS_BLOB, Phase.STREAMING})
"""Phases whose tap still buffers frames (and only while the session has not ended)."""
STARTING: Final = frozenset({Phase.NEEDS_KEY, Phase.NEEDS_ROW, Phase.NEEDS_BLOB})
"""Before the first segment can be stored: data key, row and blob still to make."""
GIVEN_UP: Final = frozenset({Phase.ABANDONED_BEFORE_ROW, Phase.ABANDONED, Phase.DISCARDING})
"""Phases the sealer only finishes: free the memory, close or leave the row incomplete, forget."""
OWNS_ROW: Final = frozenset({Phase.NEEDS_BLOB, Phase.STREAMING, Phase.FINAL_SEALED})
"""Phases past the row step whose row this replica writes: it heartbeats a `written` one, and its upkeep
writes a `deferred` one."""
APPENDS: Final = frozenset({Phase.STREAMING, Phase.FINAL_SEALED})
"""Phases in which sealed segments are appended to the blob."""
ENDED: Final = frozenset({Phase.COMPLETE, Phase.INCOMPLETE, Phase.DISCARDED})
"""Terminal phases: the recorder has forgotten the recording."""


def next_phase(phase: Phase, event: Event) -> Phase:
    """The phase after `event`; an event the phase cannot take is a bug and raises `InvalidTransition`."""
    following = TRANSITIONS[phase].get(event)
    if following is None:
        raise InvalidTransition(phase, event)
    return following


ROW_TRANSITIONS: Final[dict[RowState, dict[RowEvent, RowState]]] = {
    RowState.NOT_WRITTEN: {RowEvent.WRITTEN: RowState.WRITTEN, RowEvent.DEFERRED: RowState.DEFERRED},
    RowState.DEFERRED: {RowEvent.DEFERRED_WRITTEN: RowState.WRITTEN, RowEvent.REFUSED: RowState.REFUSED},
    RowState.WRITTEN: {},
    RowState.REFUSED: {},
}


def next_row_state(row: RowState, event: RowEvent) -> RowState:
    """The row's state after `event`; an event the state cannot take is a bug and raises `InvalidTransition`."""
    following = ROW_TRANSITIONS[row].get(event)
    if following is None:
        raise InvalidTransition(row, event)
    return following


@dataclass(slots=True)
class Backoff:
    """When to try a failed step again, and when to give up: pauses double from 0.25 s to 5 s (C8)."""

    failing_since: float | None = None
    pause_s: float = 0.0
    next_try: float = 0.0

    def failed(self, now: float, deadline_s: float) -> bool:
        """Note a failure at `now`; True once the failures have lasted `deadline_s` (time to give up)."""
        if self.failing_since is None:
            self.failing_since = now
        self.pause_s = min(5.0, max(0.25, self.pause_s * 2))
        self.next_try = now + self.pause_s
        return now - self.failing_since >= deadline_s

    def succeeded(self) -> None:
        self.failing_since = None
        self.pause_s = 0.0
