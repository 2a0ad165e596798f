"""Fifty SDK sessions at once through one relay process all complete correctly."""

from __future__ import annotations

import asyncio
import base64

from azure.ai.voicelive.aio import connect
from azure.core.credentials import AzureKeyCredential

from tests.fixtures.relay import STANDIN_API_KEY, RelayHandle, StandinHandle
from tests.relay.audio import frames, speech_like


async def _session(relay: RelayHandle, index: int) -> tuple[str, int]:
    audio = speech_like(1.5, marker_hz=150 + index)  # 0.9 s voiced, 0.6 s silence ends the turn
    echoed = b""
    transcript = ""
    async with connect(endpoint=relay.endpoint("acme"), credential=AzureKeyCredential(STANDIN_API_KEY),
                       model="gpt-4o") as conn:
        for chunk in frames(audio):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            if event.type == "conversation.item.input_audio_transcription.completed":
                transcript = event.transcript
            elif event.type == "response.audio.delta":
                echoed += event.delta if isinstance(event.delta, bytes) else base64.b64decode(event.delta)
            elif event.type == "response.done":
                break
    # The stand-in echoes the caller's utterance: each session must hear its own audio back.
    assert echoed
    assert audio.startswith(echoed[: len(echoed) // 2])
    return transcript, len(echoed)


async def test_fifty_concurrent_sdk_sessions_complete(relay: RelayHandle, standin: StandinHandle) -> None:
    results = await asyncio.wait_for(asyncio.gather(*(_session(relay, i) for i in range(50))), 120)
    assert len(results) == 50
    assert all(t.startswith("speech of ") for t, _ in results)
    assert len(standin.standin.sessions) == 50
    for _ in range(100):  # the close travels on to the upstream just after the client is done
        codes = [s.close_code for s in standin.standin.sessions.values()]
        if None not in codes:
            break
        await asyncio.sleep(0.05)
    assert codes == [1000] * 50
