"""The states of an access request. It imports nothing of the app, so the pure read policy names them too."""

from __future__ import annotations

from enum import StrEnum


class AccessRequestState(StrEnum):
    """An access request's state, stored as its value (the API shows the same string). Only an approved
    request, unrevoked and unexpired, is a grant that reads (C5)."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    REVOKED = "revoked"  # ended early: withdrawn, revoked, or ended by a change of team or assignment
    EXPIRED = "expired"
    LAPSED = "lapsed"  # never decided within 24 h
