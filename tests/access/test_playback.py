"""The read side end to end: JIT request, manager approval, playback from a SAW, every refusal alike.

A real SDK session is recorded; alice (engineer, team voice-a) asks for its request ID, mona (manager of
voice-a) approves, and alice plays it back from her registered SAW. The WAV tracks must equal, sample
for sample, what the SDK sent and what it received.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from aiohttp import web
from azure.ai.voicelive.aio import connect as sdk_connect
from azure.core.credentials import AzureKeyCredential

from app.access.jobs import run_access_job
from app.access.models import AccessRequest
from app.access.notify import signature
from app.access.saw.settings import SawSettings
from app.access.settings import TeamWebhook
from app.audit.service import integrate_pending
from app.capture.models import Recording, RecordingState
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.retention.settings import RetentionSettings
from app.storage.layout import RecordingKey
from app.storage.local import LocalDirStore
from app.storage.local_file import FILE_HEADER, FILE_MAGIC
from tests.fixtures.audit import audit_rows
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.recording import RecordingStack, recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, TEST_ADMIN_TOKEN, StandinHandle
from tests.fixtures.saw import SawPki, saw_request_headers
from tests.relay.audio import frames, speech_like

ADMIN = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}


@dataclass
class People:
    alice: dict[str, str]  # engineer of voice-a, on her SAW
    alice_elsewhere: dict[str, str]  # the same token, not from a SAW
    mona: dict[str, str]  # manager of voice-a
    max: dict[str, str]  # manager of voice-b
    carl: dict[str, str]  # engineer and manager of voice-a (may not approve himself)
    saw_id: str


@dataclass
class Session:
    request_id: str
    sent: bytes
    received: bytes


@dataclass
class Env:
    stack: RecordingStack
    people: People
    session: Session
    ticket_ref: str
    webhooks: list[tuple[dict[str, str], bytes]]


WEBHOOK_SECRET = "team-a-webhook-secret"


@contextlib.asynccontextmanager
async def webhook_receiver() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], bytes]]]]:
    """A real HTTP endpoint that keeps what it receives."""
    received: list[tuple[dict[str, str], bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        await runner.cleanup()


async def setup_people(stack: RecordingStack, mint_token: MintToken, saw_pki: SawPki, tag: str) -> People:
    for team in (f"voice-a-{tag}", f"voice-b-{tag}"):
        assert (await stack.api("POST", "/admin/teams", ADMIN, json={"name": team})).status_code == 201
    staff = [("alice", f"voice-a-{tag}", ["engineer"]), ("mona", f"voice-a-{tag}", ["manager"]),
             ("max", f"voice-b-{tag}", ["manager"]), ("carl", f"voice-a-{tag}", ["engineer", "manager"])]
    for subject, team, roles in staff:
        response = await stack.api("POST", "/admin/staff", ADMIN, json={
            "subject": f"{subject}-{tag}", "display_name": subject, "team": team, "roles": roles})
        assert response.status_code == 201, response.text
    for subject, team in (("mona", f"voice-a-{tag}"), ("max", f"voice-b-{tag}"), ("carl", f"voice-a-{tag}")):
        response = await stack.api("POST", f"/admin/teams/{team}/managers", ADMIN, json={"subject": f"{subject}-{tag}"})
        assert response.status_code == 200, response.text
    for engineer in (f"alice-{tag}", f"carl-{tag}"):
        await stack.api("POST", f"/tickets/{stack.ticket_id}/engineers", stack.ticketing, json={"engineer": engineer})
    saw = await stack.api("POST", "/admin/saws", ADMIN, json={
        "owner": f"alice-{tag}", "label": "SAW-EU-0001", "cert_pem": saw_pki.valid.pem})
    assert saw.status_code == 201, saw.text
    on_saw = saw_request_headers(saw_pki.valid.cert)

    def token(subject: str, roles: list[Role]) -> dict[str, str]:
        return bearer(mint_token(f"{subject}-{tag}", roles))

    alice = token("alice", [Role.ENGINEER])
    return People(alice={**alice, **on_saw}, alice_elsewhere=alice, mona=token("mona", [Role.MANAGER]),
                  max=token("max", [Role.MANAGER]), carl={**token("carl", [Role.ENGINEER, Role.MANAGER]), **on_saw},
                  saw_id=saw.json()["id"])


async def record_sdk_session(stack: RecordingStack, standin: StandinHandle) -> Session:
    sent = speech_like(1.5, marker_hz=180)
    received = b""
    async with sdk_connect(endpoint=stack.endpoint, credential=AzureKeyCredential(STANDIN_API_KEY),
                           model="gpt-4o") as conn:
        for chunk in frames(sent):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            if event.type == "response.audio.delta":
                received += event.delta if isinstance(event.delta, bytes) else base64.b64decode(event.delta)
            if event.type == "response.done":
                break
    request_id = list(standin.standin.sessions)[-1]
    await stack.recording(request_id)
    return Session(request_id, sent, received)


@contextlib.asynccontextmanager
async def make_env(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings,
                   mint_token: MintToken, saw_pki: SawPki, **overrides: Any) -> AsyncIterator[Env]:
    """The recorded session and the people around it; `overrides` go to the stack's settings."""
    tag = uuid4().hex[:6]
    async with webhook_receiver() as (hook_url, received), recording_stack(
            tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
            identity=identity_settings, mint_token=mint_token, saw=SawSettings(trusted_proxies=["127.0.0.1/32"]),
            access_webhooks=[TeamWebhook(team=f"voice-a-{tag}", url=hook_url, secret=WEBHOOK_SECRET)],
            **overrides) as stack:
        people = await setup_people(stack, mint_token, saw_pki, tag)
        session = await record_sdk_session(stack, standin)
        ticket = await stack.api("GET", f"/tickets/{stack.ticket_id}", stack.ticketing)
        yield Env(stack, people, session, ticket.json()["external_ref"], received)


@pytest.fixture
async def env(tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
              saw_pki: SawPki) -> AsyncIterator[Env]:
    async with make_env(tmp_path, standin, identity_settings, mint_token, saw_pki) as made:
        yield made


async def ask(env: Env, who: dict[str, str] | None = None, request_ids: list[str] | None = None,
              minutes: int = 60) -> dict[str, object]:
    response = await env.stack.api("POST", "/access/requests", who or env.people.alice, json={
        "ticket_id": env.stack.ticket_id, "request_ids": request_ids or [env.session.request_id],
        "justification": f"Caller reports clipped audio on {env.ticket_ref}; need to hear the turn.",
        "duration_minutes": minutes})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def approve(env: Env, grant: dict[str, object], who: dict[str, str] | None = None) -> int:
    response = await env.stack.api("POST", f"/access/requests/{grant['id']}/approve", who or env.people.mona, json={})
    return response.status_code


async def read(env: Env, path: str, who: dict[str, str] | None = None, request_id: str | None = None):  # type: ignore[no-untyped-def]
    rid = request_id or env.session.request_id
    return await env.stack.api("GET", f"/recordings/{rid}{path}", who or env.people.alice)


def pcm_of(wav_bytes: bytes) -> tuple[int, bytes]:
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        return wav.getframerate(), wav.readframes(wav.getnframes())


async def test_approved_engineer_on_her_saw_hears_exactly_what_was_said_and_heard(env: Env) -> None:
    grant = await ask(env)
    assert grant["state"] == "pending"
    assert await approve(env, grant) == 200
    caller = await read(env, "/audio/caller.wav")
    service = await read(env, "/audio/service.wav")
    timeline = await read(env, "/events")
    transcript = await read(env, "/transcript")
    assert caller.status_code == service.status_code == timeline.status_code == transcript.status_code == 200
    assert caller.headers["content-type"] == "audio/wav"
    assert pcm_of(caller.content) == (24000, env.session.sent)  # sample-exact, as the SDK sent it
    assert pcm_of(service.content) == (24000, env.session.received)  # and as it received it
    types = [line.split('"type":"')[1].split('"')[0] for line in timeline.text.splitlines()]
    assert "input_audio_buffer.speech_started" in types
    assert types[-1] == "end"
    assert "AAAA" not in timeline.text  # audio payloads are elided from the timeline
    texts = {(t["speaker"], t["text"].split(" of ")[0]) for t in transcript.json()["transcripts"]}
    assert texts == {("caller", "speech"), ("service", "echo")}
    async with env.stack.relay.app.state.ctx.session_factory() as session:
        reads = [r[0] for r in await audit_rows(session, "detail", action="recording.read")]
    assert len(reads) == 4
    assert any(f'"bytes":{len(caller.content)}' in d for d in reads)


async def test_wav_supports_range_requests(env: Env) -> None:
    assert await approve(env, await ask(env)) == 200
    whole = (await read(env, "/audio/caller.wav")).content
    response = await env.stack.api("GET", f"/recordings/{env.session.request_id}/audio/caller.wav",
                                   {**env.people.alice, "Range": "bytes=100-1099"})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes 100-1099/{len(whole)}"
    assert response.content == whole[100:1100]


async def make_stored_nothing(env: Env, blob: str) -> Path:
    """Make the recorded session one that stored nothing: its row incomplete(store_unavailable) and its blob
    missing, empty (a create torn by a full disk) or header only (created, no segment). The part's path."""
    ctx = env.stack.relay.app.state.ctx
    async with ctx.session_factory() as session:
        row = await session.get(Recording, env.session.request_id)
        assert row is not None
        row.state, row.incomplete_reason = RecordingState.INCOMPLETE, "store_unavailable"
        row.segments = row.bytes_committed = row.frames = 0
        region, key = row.region, RecordingKey(row.request_id, row.started_at)
        await session.commit()
    store = ctx.stores.store(region)
    assert isinstance(store, LocalDirStore)
    path = store.root.joinpath(*key.part_name(0).split("/"))
    assert await store.delete(key)
    if blob != "missing":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"" if blob == "empty" else FILE_HEADER.pack(FILE_MAGIC, 1_700_000_000_000_000))
        os.utime(path, (1_700_000_000, 1_700_000_000))
    return path


@pytest.mark.parametrize("blob", ["missing", "empty", "header_only"])
async def test_a_recording_that_stored_nothing_reads_as_empty_with_its_state(env: Env, blob: str) -> None:
    path = await make_stored_nothing(env, blob)
    before = (path.read_bytes(), path.stat().st_mtime_ns) if blob != "missing" else None
    unknown = await refusal(env, request_id=uuid4().hex)
    assert await refusal(env) == unknown  # no grant yet: the uniform 404 (C4)
    assert await approve(env, await ask(env)) == 200
    assert await refusal(env, who=env.people.alice_elsewhere) == unknown  # not from her SAW: the same
    answers = {part: await read(env, part) for part in ("/audio/caller.wav", "/audio/service.wav", "/events",
                                                         "/transcript")}
    for part, response in answers.items():
        assert response.status_code == 200, (part, response.text)
        assert response.headers["x-voicelog-recording-state"] == "incomplete"
        assert response.headers["x-voicelog-incomplete-reason"] == "store_unavailable"
        assert response.headers["x-voicelog-stored-bytes"] == "0"
    assert pcm_of(answers["/audio/caller.wav"].content) == (24000, b"")
    assert pcm_of(answers["/audio/service.wav"].content) == (24000, b"")
    assert answers["/events"].content == b""
    assert answers["/transcript"].json() == {"request_id": env.session.request_id, "transcripts": []}
    if before is None:
        assert not path.exists()  # a read creates nothing
    else:
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before  # a read never writes
    async with env.stack.relay.app.state.ctx.session_factory() as session:
        reads = [r[0] for r in await audit_rows(session, "detail", action="recording.read")]
    assert len(reads) == 4  # each honest answer is an audited read


async def refusal(env: Env, who: dict[str, str] | None = None, request_id: str | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    response = await read(env, "/audio/caller.wav", who=who, request_id=request_id)
    body = response.json()
    body.pop("instance", None)
    return response.status_code, body


async def test_unknown_id_and_known_id_without_grant_get_the_same_answer(env: Env) -> None:
    unknown = await refusal(env, request_id=uuid4().hex)
    no_grant = await refusal(env)
    assert unknown == no_grant
    assert no_grant[0] == 404
    assert no_grant[1]["code"] == "recording_not_available"


async def test_pending_request_does_not_read(env: Env) -> None:
    await ask(env)
    assert await refusal(env) == await refusal(env, request_id=uuid4().hex)


async def test_not_from_a_saw_is_refused_alike(env: Env) -> None:
    assert await approve(env, await ask(env)) == 200
    assert await refusal(env, who=env.people.alice_elsewhere) == await refusal(env, request_id=uuid4().hex)


async def test_self_approval_and_another_teams_manager_are_refused(env: Env) -> None:
    own = await ask(env, who=env.people.carl)
    response = await env.stack.api("POST", f"/access/requests/{own['id']}/approve", env.people.carl, json={})
    assert (response.status_code, response.json()["code"]) == (403, "self_approval")
    other = await ask(env)
    response = await env.stack.api("POST", f"/access/requests/{other['id']}/approve", env.people.max, json={})
    assert (response.status_code, response.json()["code"]) == (403, "not_requesters_manager")
    assert await refusal(env) == await refusal(env, request_id=uuid4().hex)


@pytest.mark.parametrize("change", ["expired", "revoked", "consent_withdrawn", "ticket_closed", "saw_revoked",
                                    "erased", "past_thirty_days"])
async def test_grant_stops_working_when(env: Env, change: str) -> None:
    grant = await ask(env)
    assert await approve(env, grant) == 200
    assert (await read(env, "/transcript")).status_code == 200
    stack = env.stack
    factory = stack.relay.app.state.ctx.session_factory
    if change == "expired":
        async with factory() as session:
            row = await session.get(AccessRequest, grant["id"])
            assert row is not None
            row.expires_at = datetime.now(UTC) - timedelta(seconds=1)
            await session.commit()
    elif change == "revoked":
        response = await stack.api("POST", f"/access/requests/{grant['id']}/revoke", env.people.alice,
                                   json={"reason": "done"})
        assert response.status_code == 200
    elif change == "consent_withdrawn":
        consent_id = (await stack.recording(env.session.request_id)).consent_id
        await stack.withdraw(consent_id)
    elif change == "ticket_closed":
        await stack.api("POST", f"/tickets/{stack.ticket_id}/close", stack.ticketing)
    elif change == "saw_revoked":
        response = await stack.api("POST", f"/admin/saws/{env.people.saw_id}/revoke", ADMIN, json={"reason": "lost"})
        assert response.status_code == 200, response.text
    elif change == "erased":
        consent_id = (await stack.recording(env.session.request_id)).consent_id
        await stack.api("POST", f"/customer/resources/{stack.resource}/consents/{consent_id}/erasure", stack.customer)
    elif change == "past_thirty_days":
        async with factory() as session:
            row = await session.get(Recording, env.session.request_id)
            assert row is not None
            row.started_at = row.started_at - timedelta(days=30, hours=1)  # purge is late: reads still refuse
            await session.commit()
    assert await refusal(env) == await refusal(env, request_id=uuid4().hex)


async def test_refusals_are_audited_with_their_reason_and_rate_limited(env: Env) -> None:
    for _ in range(20):
        await refusal(env)
    limited = await read(env, "/events")
    assert (limited.status_code, limited.json()["code"]) == (429, "rate_limited")
    async with env.stack.relay.app.state.ctx.session_factory() as session:
        details = [r[0] for r in await audit_rows(session, "detail", action="recording.read_denied")]
    assert len(details) == 20
    assert all('"reason":"no_grant"' in d for d in details)


async def test_bad_requests_get_clear_errors(env: Env) -> None:
    no_ticket_ref = await env.stack.api("POST", "/access/requests", env.people.alice, json={
        "ticket_id": env.stack.ticket_id, "request_ids": [env.session.request_id],
        "justification": "I would like to listen to this call please"})
    assert (no_ticket_ref.status_code, no_ticket_ref.json()["code"]) == (422, "invalid_justification")
    too_long = await env.stack.api("POST", "/access/requests", env.people.alice, json={
        "ticket_id": env.stack.ticket_id, "request_ids": [env.session.request_id],
        "justification": f"Need it for {env.ticket_ref} investigation", "duration_minutes": 481})
    assert (too_long.status_code, too_long.json()["code"]) == (422, "invalid_input")
    not_assigned = await env.stack.api("POST", "/access/requests", env.people.mona, json={
        "ticket_id": env.stack.ticket_id, "request_ids": [env.session.request_id],
        "justification": f"Need it for {env.ticket_ref} investigation"})
    assert not_assigned.status_code == 403


async def test_customer_sees_every_request_and_read_without_names(env: Env) -> None:
    grant = await ask(env)
    assert await approve(env, grant) == 200
    transcript = await read(env, "/transcript")
    assert transcript.status_code == 200
    state = env.stack.relay.app.state.ctx
    async with state.session_factory() as session:  # let the sequencer chain queued entries (PostgreSQL)
        await integrate_pending(session, wait=True)
        await session.commit()
    log = await env.stack.api("GET", f"/customer/resources/{env.stack.resource}/access-log", env.stack.customer)
    assert log.status_code == 200, log.text
    body = log.json()
    (request,) = body["access_requests"]
    assert request["ticket"] == env.ticket_ref
    assert request["request_ids"] == [env.session.request_id]
    assert request["requester_team"].startswith("voice-a-")
    assert (request["requester_role"], request["decided_by_role"], request["state"]) == (
        "engineer", "manager", "approved")
    assert [(r["request_id"], r["part"]) for r in body["reads"]] == [(env.session.request_id, "transcripts")]
    assert "alice" not in log.text
    assert "mona" not in log.text
    other = await env.stack.api("GET", f"/customer/resources/{env.stack.resource}/access-log", env.people.alice)
    assert other.status_code == 404


async def test_the_team_webhook_hears_of_requests_decisions_and_expiry_signed(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    saw_pki: SawPki,
) -> None:
    """The test runs the access job itself; the app's scheduler (at second 0 of every minute) would race it."""
    async with make_env(tmp_path, standin, identity_settings, mint_token, saw_pki,
                        retention=RetentionSettings(scheduler_enabled=False)) as env:
        grant = await ask(env, minutes=10)
        assert await approve(env, grant) == 200
        state = env.stack.relay.app.state.ctx
        counts = await run_access_job(session_factory=state.session_factory, clock=state.clock,
                                      access=state.access)
        assert counts["warned"] == 1  # 10 minutes left: inside the 15-minute warning
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30  # delivery is in the background, with retries
        while len(env.webhooks) < 3:
            if loop.time() > deadline:
                raise AssertionError(f"3 webhooks not delivered within 30 s: {[body for _, body in env.webhooks]}")
            await asyncio.sleep(0.05)
        events = []
        for headers, body in env.webhooks:
            expected = signature(WEBHOOK_SECRET.encode(), headers["X-Voicelog-Timestamp"], body)
            assert headers["X-Voicelog-Signature"] == expected
            payload = json.loads(body)
            assert payload["access_request"] == grant["id"]
            assert "justification" not in payload
            events.append(payload["event"])
        assert events == ["access.requested", "access.approved", "access.expiring_soon"]


async def test_a_dead_webhook_never_blocks_a_decision(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    saw_pki: SawPki,
) -> None:
    tag = uuid4().hex[:6]
    async with recording_stack(
            tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", identity=identity_settings,
            mint_token=mint_token, saw=SawSettings(trusted_proxies=["127.0.0.1/32"]),
            access_webhooks=[TeamWebhook(team=f"voice-a-{tag}", url="http://127.0.0.1:9/hook", secret="s")]) as stack:
        people = await setup_people(stack, mint_token, saw_pki, tag)
        env = Env(stack, people, await record_sdk_session(stack, standin), "", [])
        env.ticket_ref = (await stack.api("GET", f"/tickets/{stack.ticket_id}", stack.ticketing)).json()[
            "external_ref"]
        loop = asyncio.get_running_loop()
        started = loop.time()
        grant = await ask(env)
        assert await approve(env, grant) == 200
        assert loop.time() - started < 5  # delivery retries happen in the background
