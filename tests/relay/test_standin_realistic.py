"""The realistic stand-in (what `voicelog serve` embeds): a response delay, audio in real time, and a barge-in
that cuts the answer off, as recorded through voicelog and read back as turns and on the session clock."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from websockets.asyncio.client import connect as ws_connect

from app.access.saw.settings import SawSettings
from app.identity.settings import IdentitySettings
from app.relay.standin.protocol import RESPONSE_DELAY_S
from app.relay.standin.server import Standin, StandinOptions, bound_port
from tests.access.test_playback import Env, approve, ask, read, setup_people
from tests.access.test_session_clock import RATE, paced_sdk_session, silence, stereo, voiced
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle
from tests.fixtures.saw import SawPki
from tests.relay.audio import frames, speech_like

# Silence, speech, a pause long enough for the answer to play a while, speech over it, silence.
BARGE_IN = [silence(0.4), voiced(1.0, 180), silence(1.6), voiced(0.6, 240), silence(0.8)]


@pytest.fixture
async def realistic_standin() -> AsyncIterator[StandinHandle]:
    instance = Standin(StandinOptions(api_key=STANDIN_API_KEY, keep_frames=True, realistic=True))
    server = await instance.start("127.0.0.1", 0)
    try:
        yield StandinHandle(instance, bound_port(server))
    finally:
        server.close()
        await server.wait_closed()


def test_the_embedded_stand_in_is_realistic_and_explicit_options_stay_instant() -> None:
    assert Standin().options.realistic
    assert not StandinOptions().realistic


async def test_caller_talking_over_the_answer_cuts_it_off(
    tmp_path: Path, realistic_standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    saw_pki: SawPki,
) -> None:
    async with recording_stack(tmp_path, realistic_standin,
                               database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}", identity=identity_settings,
                               mint_token=mint_token, saw=SawSettings(trusted_proxies=["127.0.0.1/32"])) as stack:
        people = await setup_people(stack, mint_token, saw_pki, "real")
        session = await paced_sdk_session(stack, realistic_standin, BARGE_IN)
        env = Env(stack, people, session, "", [])
        env.ticket_ref = (await stack.api("GET", f"/tickets/{stack.ticket_id}", stack.ticketing)).json()[
            "external_ref"]
        assert await approve(env, await ask(env)) == 200

        first, second = (await read(env, "/turns")).json()["turns"]
        assert first["latency_first_audio_ms"] >= RESPONSE_DELAY_S * 1000  # the stand-in thought first
        assert (first["interrupted"], first["interrupted_by"]) == (True, "caller_speech")
        assert first["response_status"] == "cancelled"  # cut off, as a pipeline does on server VAD
        assert first["response_audio_ms"] < 1500  # less than the 2 s answer it had
        assert (second["interrupted"], second["response_status"]) == (False, "completed")

        _left, right = stereo((await read(env, "/audio/session.wav")).content)
        assert any(right[first["first_audio_ms"] * RATE // 1000 : first["interrupted_at_ms"] * RATE // 1000])
        quiet_from = (first["interrupted_at_ms"] + 500) * RATE // 1000  # lead + the delta in flight, at most
        assert not any(right[quiet_from : second["first_audio_ms"] * RATE // 1000])


async def _turn(url: str, *, cancel_after_created: bool) -> list[dict[str, object]]:
    """One burst-sent turn straight to the stand-in; the server events until response.done."""
    events: list[dict[str, object]] = []
    async with ws_connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as conn:
        for chunk in frames(speech_like(1.5)):
            await conn.send(json.dumps({"type": "input_audio_buffer.append",
                                        "audio": base64.b64encode(chunk).decode()}))
        async for message in conn:
            event = json.loads(message)
            events.append(event)
            if event["type"] == "response.created" and cancel_after_created:
                await conn.send(json.dumps({"type": "response.cancel"}))
            if event["type"] == "response.done":
                return events
    raise AssertionError("no response.done")


async def test_response_cancel_cuts_the_answer_off_and_instant_mode_answers_whole(
        realistic_standin: StandinHandle) -> None:
    base = f"{realistic_standin.url}/voice-live/realtime"
    cancelled = await _turn(base, cancel_after_created=True)
    done = cancelled[-1]["response"]
    assert isinstance(done, dict)
    assert (done["status"], done["status_details"]) == ("cancelled", {"type": "cancelled",
                                                                      "reason": "client_cancelled"})
    whole = await _turn(f"{base}?x-standin-mode=instant", cancel_after_created=False)
    deltas = [e for e in whole if e["type"] == "response.audio.delta"]
    assert len([e for e in cancelled if e["type"] == "response.audio.delta"]) < len(deltas)
    assert whole[-1]["response"]["status"] == "completed"  # type: ignore[index]
