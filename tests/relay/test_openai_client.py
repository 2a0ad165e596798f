"""The `openai` package's realtime client reaches the stand-in through the relay's /v1 path."""

from __future__ import annotations

import base64

from openai import AsyncOpenAI

from tests.fixtures.relay import STANDIN_API_KEY, RelayHandle, StandinHandle
from tests.relay.audio import speech_like


async def test_openai_realtime_connect_through_relay(relay: RelayHandle, standin: StandinHandle) -> None:
    client = AsyncOpenAI(api_key=STANDIN_API_KEY, websocket_base_url=f"{relay.ws}/resources/acme/v1")
    types: list[str] = []
    audio = b""
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "be brief"})
        await conn.input_audio_buffer.append(audio=base64.b64encode(speech_like(1.0)).decode())
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        async for event in conn:
            types.append(event.type)
            if event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            if event.type == "response.done":
                break
    assert types[0] == "session.created"
    assert "session.updated" in types
    assert "input_audio_buffer.committed" in types
    assert "response.output_audio.delta" in types  # the GA event family on /v1
    assert len(audio) > 0
    (seen,) = standin.standin.sessions.values()
    assert seen.path == "/v1/realtime"
    assert seen.query["model"] == ["gpt-realtime"]
    assert seen.headers["authorization"] == f"Bearer {STANDIN_API_KEY}"
