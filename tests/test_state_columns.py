"""Recording, access-request and consent states, and a recording's incomplete and shred reasons, are StrEnums
stored as their plain values (the schema is unchanged)."""

from __future__ import annotations

import pytest
from sqlalchemy import String, bindparam, create_engine, text
from sqlalchemy.exc import StatementError

from app.access.models import AccessRequest
from app.access.states import AccessRequestState
from app.capture.models import Recording, RecordingState
from app.capture.states import IncompleteReason, ShredReason
from app.db import StrEnumText
from app.tickets.models import Consent
from app.tickets.states import ConsentEnding, ConsentState


def test_the_stored_values_are_the_strings_the_api_has_always_shown() -> None:
    assert [s.value for s in RecordingState] == ["recording", "complete", "incomplete", "erased", "purged"]
    assert [s.value for s in AccessRequestState] == ["pending", "approved", "denied", "revoked", "expired",
                                                     "lapsed"]
    assert [s.value for s in ConsentEnding] == ["withdrawn", "ticket_closed", "erased"]
    assert [s.value for s in IncompleteReason] == ["key_service_unavailable", "database_unavailable",
                                                   "store_unavailable", "internal_error", "consent_ended", "erased",
                                                   "relay_restarted"]
    assert [s.value for s in ShredReason] == ["erasure", "retention"]
    assert [s.value for s in ConsentState] == ["scheduled", "active", "expired", "withdrawn", "ticket_closed",
                                               "erased"]


def test_a_consent_that_ended_shows_its_stored_reason_as_its_state() -> None:
    assert [ConsentState.ended(reason) for reason in ConsentEnding] == [
        ConsentState.WITHDRAWN, ConsentState.TICKET_CLOSED, ConsentState.ERASED]


def test_the_columns_are_still_varchar_16() -> None:
    for column in (Recording.__table__.c.state, AccessRequest.__table__.c.state):
        assert isinstance(column.type, StrEnumText)
        assert isinstance(column.type.impl_instance, String)
        assert column.type.impl_instance.length == 16


def test_the_consent_end_reason_column_is_still_varchar_32() -> None:
    end_reason = Consent.__table__.c.end_reason
    assert isinstance(end_reason.type, StrEnumText)
    assert end_reason.type.enum is ConsentEnding
    assert isinstance(end_reason.type.impl_instance, String)
    assert end_reason.type.impl_instance.length == 32


def test_the_recording_reason_columns_are_still_varchar_64_and_16() -> None:
    columns = Recording.__table__.c
    for column, enum, length in ((columns.incomplete_reason, IncompleteReason, 64),
                                 (columns.shred_reason, ShredReason, 16)):
        assert isinstance(column.type, StrEnumText)
        assert column.type.enum is enum
        assert isinstance(column.type.impl_instance, String)
        assert column.type.impl_instance.length == length


def test_values_are_stored_as_plain_strings_and_read_back_as_members() -> None:
    state = StrEnumText(AccessRequestState, 16)
    with create_engine("sqlite://").connect() as conn:
        stored = conn.execute(text("SELECT typeof(:s), :s").bindparams(
            bindparam("s", AccessRequestState.APPROVED, type_=state))).one()
        read = conn.execute(text("SELECT 'lapsed' AS s").columns(s=state)).scalar_one()
        with pytest.raises(StatementError):
            conn.execute(text("SELECT :s").bindparams(bindparam("s", "granted", type_=state)))
    assert tuple(stored) == ("text", "approved")
    assert read is AccessRequestState.LAPSED
