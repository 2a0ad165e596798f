"""The official azure-ai-voicelive SDK, unchanged, talks to the stand-in through the relay."""

from __future__ import annotations

import base64

import pytest
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.ai.voicelive.aio import connect
from azure.ai.voicelive.models import RequestSession
from azure.core.credentials import AccessToken, AzureKeyCredential

from tests.fixtures.relay import STANDIN_API_KEY, RelayHandle, StandinHandle
from tests.relay.audio import frames, speech_like


class StaticToken:
    """An AsyncTokenCredential handing out one bearer token (the stand-in accepts it as its key)."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def get_token(self, *_scopes: str, **_kwargs: object) -> AccessToken:
        return AccessToken(self.token, 2_000_000_000)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticToken:
        return self

    async def __aexit__(self, *_args: object) -> None:
        return None


async def _converse(relay: RelayHandle, credential: object) -> list[str]:
    seen: list[str] = []
    transcript = None
    audio_out = 0
    async with connect(endpoint=relay.endpoint("acme"), credential=credential, model="gpt-4o") as conn:
        await conn.session.update(session=RequestSession(input_audio_format="pcm16",
                                                         input_audio_transcription={"model": "whisper-1"}))
        for chunk in frames(speech_like(3.0)):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            seen.append(event.type)
            if event.type == "conversation.item.input_audio_transcription.completed":
                transcript = event.transcript
            if event.type == "response.audio.delta":
                audio_out += len(event.delta)
            if event.type == "response.done":
                break
    assert transcript is not None
    assert transcript.startswith("speech of ")
    assert audio_out > 0
    return seen


@pytest.mark.parametrize("auth", ["api-key", "bearer"])
async def test_sdk_session_through_relay_gets_speech_events_transcript_and_audio(
    relay: RelayHandle, standin: StandinHandle, auth: str
) -> None:
    credential = AzureKeyCredential(STANDIN_API_KEY) if auth == "api-key" else StaticToken(STANDIN_API_KEY)
    seen = await _converse(relay, credential)
    assert seen[0] == "session.created"
    for expected in ("session.updated", "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                     "input_audio_buffer.committed", "response.created", "response.audio.delta",
                     "response.done"):
        assert expected in seen, expected
    (received,) = standin.standin.sessions.values()
    assert received.path == "/voice-live/realtime"
    assert received.query["api-version"] == ["2026-07-15"]
    assert received.query["model"] == ["gpt-4o"]
    if auth == "api-key":
        assert received.headers["api-key"] == STANDIN_API_KEY
    else:
        assert received.headers["authorization"] == f"Bearer {STANDIN_API_KEY}"


async def test_wrong_key_is_refused_with_the_upstream_status(relay: RelayHandle) -> None:
    with pytest.raises(VoiceLiveConnectionError, match="401"):
        async with connect(endpoint=relay.endpoint("acme"), credential=AzureKeyCredential("wrong"),
                           model="gpt-4o"):
            pass
