"""Customer admins list their own recordings and erase them; erasure leaves every copy unreadable."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from websockets.asyncio.client import connect

from app.capture.models import Recording
from app.capture.recovery import close_stale_recordings
from app.capture.states import IncompleteReason, ShredReason
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.storage.layout import RecordingKey
from app.vault.envelope import unwrap_data_key
from app.vault.errors import KeyUnavailable
from app.vault.segments import open_stream
from tests.fixtures.audit import audit_rows
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.recording import RecordingStack, recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle

ECHO = "/voice-live/realtime?x-standin-mode=echo"


async def echo_session(stack: RecordingStack, correlation: str | None = None, frames: int = 5) -> str:
    headers = {"api-key": STANDIN_API_KEY}
    if correlation:
        headers["x-ms-client-request-id"] = correlation
    async with connect(f"{stack.relay.ws}/resources/{stack.resource}{ECHO}", additional_headers=headers) as ws:
        for i in range(frames):
            await ws.send(f"frame {i}")
            await ws.recv()
        return ws.response.headers["x-ms-request-id"] if ws.response else ""


@pytest.fixture
async def stack(tmp_path: Path, standin: StandinHandle, app_db_url: str, identity_settings: IdentitySettings,
                mint_token: MintToken) -> RecordingStack:
    async with recording_stack(tmp_path, standin, database_url=app_db_url, identity=identity_settings,
                               mint_token=mint_token) as built:
        yield built  # type: ignore[misc]


async def test_customer_lists_request_ids_and_finds_one_by_correlation_id(stack: RecordingStack) -> None:
    first = await echo_session(stack, correlation="my-call-1")
    second = await echo_session(stack, correlation="my-call-2")
    await stack.recording(first)
    await stack.recording(second)
    listed = await stack.api("GET", f"/customer/resources/{stack.resource}/recordings", stack.customer)
    assert [r["request_id"] for r in listed.json()] == [second, first]
    assert {r["state"] for r in listed.json()} == {"complete"}
    found = await stack.api("GET", f"/customer/resources/{stack.resource}/recordings?correlation_id=my-call-1",
                            stack.customer)
    assert [r["request_id"] for r in found.json()] == [first]


async def test_staff_and_other_tenants_cannot_list(stack: RecordingStack, mint_token: MintToken) -> None:
    await stack.recording(await echo_session(stack))
    engineer = bearer(mint_token("alice", [Role.ENGINEER, Role.MANAGER, Role.ADMIN, Role.AUDITOR]))
    other = bearer(mint_token("eve", [Role.CUSTOMER_ADMIN], tenant="someone-else"))
    as_staff = await stack.api("GET", f"/customer/resources/{stack.resource}/recordings", engineer)
    as_other = await stack.api("GET", f"/customer/resources/{stack.resource}/recordings", other)
    unknown = await stack.api("GET", "/customer/resources/nope/recordings", other)
    assert as_staff.status_code == 403  # C4: no staff role lists recordings
    assert as_other.status_code == unknown.status_code == 404
    assert as_other.json() == {**unknown.json(), "instance": as_other.json()["instance"]}


async def test_erasure_destroys_keys_then_blobs_and_a_copy_taken_before_stays_unreadable(
    stack: RecordingStack,
) -> None:
    ids = [await echo_session(stack), await echo_session(stack)]
    state = stack.relay.app.state.ctx
    copies = {}
    for request_id in ids:
        row = await stack.recording(request_id)
        key = RecordingKey(request_id, row.started_at)
        blob = b"".join([c async for c in state.stores.store(row.region).stream(key)])
        assert open_stream(await unwrap_data_key(state.keyrings.for_region(row.region), row.wrapped_dek,
                                                 region=row.region, request_id=request_id),
                           blob, region=row.region, request_id=request_id).complete
        copies[request_id] = (row.wrapped_dek, blob, row.region, key)
    consent_id = (await stack.recording(ids[0])).consent_id
    response = await stack.api("POST", f"/customer/resources/{stack.resource}/consents/{consent_id}/erasure",
                               stack.customer)
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["recordings"] == 2
    assert sorted(r["request_id"] for r in receipt["receipts"]) == sorted(ids)
    assert receipt["blobs_pending"] == []
    assert [r["reason"] for r in receipt["receipts"]] == ["erasure", "erasure"]
    for request_id, (wrapped, _blob, region, key) in copies.items():
        row = await stack.recording(request_id)
        assert (row.state, row.wrapped_dek, row.shred_reason) == ("erased", None, "erasure")
        assert row.shred_reason is ShredReason.ERASURE
        assert json.loads(row.receipt or "{}")["request_id"] == request_id
        assert not await state.stores.store(region).exists(key)
        with pytest.raises(KeyUnavailable):  # the copy of the row taken before: refused by the key service
            await unwrap_data_key(state.keyrings.for_region(region), wrapped, region=region, request_id=request_id)
    consents = await stack.api("GET", f"/customer/resources/{stack.resource}/consents", stack.customer)
    assert consents.json()[0]["state"] == "erased"
    new_session = await echo_session(stack)
    assert new_session not in {r.request_id for r in await stack.recordings()}  # recording stopped too
    async with state.session_factory() as session:
        actions = [r[0] for r in await audit_rows(session, "action")]
        purged = [json.loads(detail)["reason"] for request_id, detail
                  in await audit_rows(session, "request_id", "detail", action="recording.purged") if request_id in ids]
        stored = [(await session.execute(sa.text("SELECT shred_reason FROM recordings WHERE request_id = :r"),
                                         {"r": request_id})).scalar_one() for request_id in ids]
    assert "consent.erasure_requested" in actions
    assert purged == ["erasure", "erasure"]
    assert stored == ["erasure", "erasure"]  # the column holds the plain string, as ever
    assert actions.count("recording.purged") >= 2
    assert actions.count("key.destroyed") >= 2


async def test_other_tenant_cannot_erase(stack: RecordingStack, mint_token: MintToken) -> None:
    request_id = await echo_session(stack)
    consent_id = (await stack.recording(request_id)).consent_id
    other = bearer(mint_token("eve", [Role.CUSTOMER_ADMIN], tenant="someone-else"))
    response = await stack.api("POST", f"/customer/resources/{stack.resource}/consents/{consent_id}/erasure", other)
    assert response.status_code == 404
    assert (await stack.recording(request_id)).wrapped_dek is not None


async def test_a_recording_left_by_a_dead_replica_is_closed_incomplete(stack: RecordingStack) -> None:
    request_id = await echo_session(stack)
    row = await stack.recording(request_id)
    state = stack.relay.app.state.ctx
    async with state.session_factory() as session:
        stale = await session.get(Recording, request_id)
        assert stale is not None
        stale.state, stale.owner = "recording", "replica-that-died"
        stale.heartbeat_at = stale.started_at - timedelta(minutes=5)
        await session.commit()
    # This replica's own upkeep runs the same recovery and may get there first on a slow machine: what is
    # checked is the row, whoever closed it.
    await close_stale_recordings(session_factory=state.session_factory, clock=state.clock,
                                 stores=state.stores, stale_after=timedelta(seconds=60), live=set())
    recovered = await stack.recording(request_id)
    assert (recovered.state, recovered.incomplete_reason) == ("incomplete", "relay_restarted")
    assert recovered.incomplete_reason is IncompleteReason.RELAY_RESTARTED
    async with state.session_factory() as session:
        stored = (await session.execute(sa.text("SELECT incomplete_reason FROM recordings WHERE request_id = :r"),
                                        {"r": request_id})).scalar_one()
        reasons = [json.loads(detail)["reason"] for (detail,) in
                   await audit_rows(session, "detail", action="recording.incomplete", request_id=request_id)]
    assert (stored, reasons) == ("relay_restarted", ["relay_restarted"])
    assert recovered.bytes_committed == row.bytes_committed  # the committed blob length, read from the store


async def test_a_starting_replica_closes_what_a_dead_one_left(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
) -> None:
    """The recorder runs recovery when it starts: no call needed."""
    database = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    async with recording_stack(tmp_path / "a", standin, database_url=database, identity=identity_settings,
                               mint_token=mint_token) as first:
        request_id = await echo_session(first)
        await first.recording(request_id)
        async with first.relay.app.state.ctx.session_factory() as session:
            row = await session.get(Recording, request_id)
            assert row is not None
            row.state, row.owner = "recording", "replica-that-died"
            row.heartbeat_at = row.started_at - timedelta(minutes=10)
            await session.commit()
    async with recording_stack(tmp_path / "b", standin, database_url=database, identity=identity_settings,
                               mint_token=mint_token, consent=False) as second:
        recovered = await second.recording(request_id, timeout=10)
    assert (recovered.state, recovered.incomplete_reason) == ("incomplete", "relay_restarted")
