"""Why a recording ended early, and why it was destroyed. It imports nothing of the app, so any domain may name
them."""

from __future__ import annotations

from enum import StrEnum


class IncompleteReason(StrEnum):
    """Why a recording ended `incomplete` (C8): the `incomplete_reason` column and the `recording.incomplete`
    audit entry's reason, stored as its value. The recorder also counts retries by it (the same label strings)."""

    KEY_SERVICE_UNAVAILABLE = "key_service_unavailable"  # no data key could be made
    DATABASE_UNAVAILABLE = "database_unavailable"
    STORE_UNAVAILABLE = "store_unavailable"
    INTERNAL_ERROR = "internal_error"  # a sealer bug gave the recording up
    CONSENT_ENDED = "consent_ended"  # the database said the consent did not cover the session (C1)
    ERASED = "erased"  # the customer erased the consent's recordings while this one was live
    RELAY_RESTARTED = "relay_restarted"  # its writer stopped heartbeating; recovery closed it


class ShredReason(StrEnum):
    """Why a recording was destroyed: the `shred_reason` column, the receipt's and the `recording.purged` audit
    entry's reason, stored as its value. It decides the recording's state (erased or purged)."""

    ERASURE = "erasure"  # on the customer's request
    RETENTION = "retention"  # at the end of retention (C7)
