"""A consent's states. It imports nothing of the app, so any domain (and the console's templates) may name them."""

from __future__ import annotations

from enum import StrEnum


class ConsentEnding(StrEnum):
    """Why a consent ended: the `end_reason` column, stored as its value. Each is also the consent's state from
    then on (`ConsentState` has the same strings), so the API and the console show what was stored."""

    WITHDRAWN = "withdrawn"
    TICKET_CLOSED = "ticket_closed"
    ERASED = "erased"  # ended by the customer's erasure: no session is covered by it any more (C1)


class ConsentState(StrEnum):
    """A consent's state as the API and the console show it (the same strings as ever): derived from its window
    and, once it ended, its `ConsentEnding`. Only an active consent records (C1)."""

    SCHEDULED = "scheduled"
    ACTIVE = "active"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"
    TICKET_CLOSED = "ticket_closed"
    ERASED = "erased"

    @classmethod
    def ended(cls, reason: ConsentEnding) -> ConsentState:
        """The state a consent ended for `reason` is in."""
        return cls(reason)
