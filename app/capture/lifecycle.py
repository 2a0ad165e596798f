"""The live recording's lifecycle: one enum of phases, one pure transition function, and the retry timer.

The phase says what the sealer must do next for a recording and whether it may still write (C1, C8):

    needs_key -> needs_row -> needs_blob -> streaming -> final_sealed -> complete
    needs_row --row_deferred--> needs_blob     (the database is away: the blob goes first, the row follows)
    any live phase --abandon--> abandoned_before_row | abandoned  --released--> incomplete
    needs_row --consent_ended--> discarding --released--> discarded   (nothing is ever stored)
    a deferred row's phase --consent_ended--> discarding                (what was stored is deleted)

The relay's end of the session is not a phase: it may come in any phase, and it is data (`EndRecord`)
that makes the next seal the last one. Retries are a timer (`Backoff`), not a phase: they decide when the
recorder gives up, and giving up is the `ABANDON` event.

Abandon happens beside the sealer (an erasure request), so an I/O the sealer had in flight may land after
it: such a late event is absorbed by the abandoned phase (a late row is remembered, so that it is closed
`incomplete`), and nothing new is started. A row closed `complete` while the abandon came in is not a
`FINISHED`: the abandon's own finish then finds nothing left to close. Any other (phase, event) pair is a
bug and raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final


class Phase(StrEnum):
    NEEDS_KEY = "needs_key"  # opened under a consent: no data key yet
    NEEDS_ROW = "needs_row"  # data key made: the row and its `recording.started` entry not yet written
    NEEDS_BLOB = "needs_blob"  # row written: the blob and its header not yet stored
    STREAMING = "streaming"  # sealing segments from the buffer and appending them
    FINAL_SEALED = "final_sealed"  # the segment with the end record is sealed: append the rest, close the row
    ABANDONED_BEFORE_ROW = "abandoned_before_row"  # given up with no row: leave a keyless incomplete row
    ABANDONED = "abandoned"  # given up with its row written: close the row incomplete(reason)
    DISCARDING = "discarding"  # the consent had ended when the row was due: nothing is stored, ever
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


class InvalidTransition(RuntimeError):
    def __init__(self, phase: Phase, event: Event) -> None:
        super().__init__(f"recording phase {phase} has no transition on {event}")
        self.phase, self.event = phase, event


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
GIVEN_UP: Final = frozenset({Phase.ABANDONED_BEFORE_ROW, Phase.ABANDONED, Phase.DISCARDING})
"""Phases the sealer only finishes: free the memory, close or leave the row incomplete, forget."""
OWNS_ROW: Final = frozenset({Phase.NEEDS_BLOB, Phase.STREAMING, Phase.FINAL_SEALED})
"""Phases whose row exists and is being written by this replica (it heartbeats them)."""
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
