"""One session clock, end to end: a real SDK session with known timing, read back as the engineer hears it.

The client sends in real time (20 ms frames, never faster): 0.4 s of silence, 1.0 s of speech, a 1.0 s pause
(the stand-in's server VAD ends the turn after 0.5 s of it and answers with an echo of the turn), then 0.6 s of
speech over that answer (a barge-in), then 0.8 s of silence for the second answer. The frame log holds the
relay-side time of every frame; the stereo WAV, the events and the turns must agree with it.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import json
import math
import struct
import wave
from pathlib import Path
from typing import Any

from azure.ai.voicelive.aio import connect as sdk_connect
from azure.core.credentials import AzureKeyCredential

from app.access.saw.settings import SawSettings
from app.capture.frame_log import C2S, FrameRecord
from app.identity.settings import IdentitySettings
from tests.access.test_playback import Env, Session, approve, ask, read, setup_people
from tests.fixtures.audit import audit_rows
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle
from tests.fixtures.saw import SawPki

RATE = 24000
FRAME = RATE // 50  # 20 ms
ONE_FRAME = FRAME  # the tolerance: one 20 ms frame, in samples
AUDIO_DELTAS = ("response.audio.delta", "response.output_audio.delta")


def voiced(seconds: float, hz: float) -> bytes:
    n = int(seconds * RATE)
    return struct.pack(f"<{n}h", *(int(6000 * sum(math.sin(2 * math.pi * hz * k * i / RATE) / k for k in (1, 2, 3)))
                                   for i in range(n)))


def silence(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


SCRIPT = [silence(0.4), voiced(1.0, 180), silence(1.0), voiced(0.6, 240), silence(0.8)]


async def paced_sdk_session(stack: Any, standin: StandinHandle, script: list[bytes] | None = None) -> Session:
    """Send `script` (SCRIPT) in real time while reading every server event; stop after the second response.done."""
    audio = b"".join(script or SCRIPT)
    received = b""
    async with sdk_connect(endpoint=stack.endpoint, credential=AzureKeyCredential(STANDIN_API_KEY),
                           model="gpt-4o") as conn:

        async def speak() -> None:
            for start in range(0, len(audio), 2 * FRAME):
                await conn.input_audio_buffer.append(audio=base64.b64encode(audio[start:start + 2 * FRAME]).decode())
                await asyncio.sleep(0.02)  # real time at most: a frame is never sent before the previous one ends

        speaking = asyncio.create_task(speak())
        done = 0
        async for event in conn:
            if event.type == "response.audio.delta":
                received += event.delta if isinstance(event.delta, bytes) else base64.b64decode(event.delta)
            if event.type == "response.done":
                done += 1
                if done == 2:
                    break
        await speaking
    request_id = list(standin.standin.sessions)[-1]
    await stack.recording(request_id)
    return Session(request_id, audio, received)


def stereo(wav_bytes: bytes) -> tuple[list[int], list[int]]:
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, RATE, 2)
        data = wav.readframes(wav.getnframes())
    samples = struct.unpack(f"<{len(data) // 2}h", data)
    return list(samples[0::2]), list(samples[1::2])


def onsets(channel: list[int], quiet_frames: int = 10) -> list[int]:
    """Sample indexes where sound starts after at least `quiet_frames` frames of digital silence."""
    found, quiet = [], quiet_frames * FRAME
    for i, value in enumerate(channel):
        if value != 0:
            if quiet >= quiet_frames * FRAME:
                found.append(i)
            quiet = 0
        else:
            quiet += 1
    return found


def first_sound(pcm: bytes) -> int:
    """The index of the first non-zero sample of pcm16 audio."""
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return next(i for i, v in enumerate(samples) if v != 0)


def event_type(frame: FrameRecord) -> str:
    return str(json.loads(frame.payload).get("type", ""))


async def test_stereo_events_and_turns_agree_with_the_relay_clock(
    tmp_path: Path, standin: StandinHandle, identity_settings: IdentitySettings, mint_token: MintToken,
    saw_pki: SawPki,
) -> None:
    async with recording_stack(tmp_path, standin, database_url=f"sqlite+aiosqlite:///{tmp_path / 'r.db'}",
                               identity=identity_settings, mint_token=mint_token,
                               saw=SawSettings(trusted_proxies=["127.0.0.1/32"])) as stack:
        people = await setup_people(stack, mint_token, saw_pki, "clk")
        session = await paced_sdk_session(stack, standin)
        ticket_ref = (await stack.api("GET", f"/tickets/{stack.ticket_id}", stack.ticketing)).json()["external_ref"]
        env = Env(stack, people, session, ticket_ref, [])
        frames = (await stack.contents(session.request_id)).frames
        assert await approve(env, await ask(env)) == 200

        # Relay-side facts, straight from the frame log.
        c2s_audio = [f for f in frames if f.direction == C2S]
        speech_frames = [f for f in c2s_audio if base64.b64decode(json.loads(f.payload)["audio"]).strip(b"\0")]
        bursts = [speech_frames[0]] + [b for a, b in itertools.pairwise(speech_frames)
                                       if b.offset_us - a.offset_us > 200_000]
        s2c = [f for f in frames if f.direction != C2S]
        stopped = [f for f in s2c if event_type(f) == "input_audio_buffer.speech_stopped"]
        started = [f for f in s2c if event_type(f) == "input_audio_buffer.speech_started"]
        done = [f for f in s2c if event_type(f) == "response.done"]
        first_audio = [next(f for f in s2c if f.offset_us > stop.offset_us and event_type(f) in AUDIO_DELTAS)
                       for stop in stopped]
        assert (len(bursts), len(stopped), len(started), len(done)) == (2, 2, 2, 2)

        # The stereo WAV: each caller burst where its first frame crossed the relay, the answer where its first
        # audio frame did (plus the silence the echo begins with), within one frame.
        wav = await read(env, "/audio/session.wav")
        assert wav.status_code == 200, wav.text
        left, right = stereo(wav.content)
        for onset, burst in zip(onsets(left), bursts, strict=True):
            assert abs(onset - burst.offset_us * RATE // 1_000_000) <= ONE_FRAME
        answer_onset = first_audio[0].offset_us * RATE // 1_000_000 + first_sound(session.received)
        assert abs(onsets(right)[0] - answer_onset) <= ONE_FRAME
        assert len(left) >= done[-1].offset_us * RATE // 1_000_000  # the file spans the session

        # The events carry the relay's time, in order, with the pipeline's own offsets beside it.
        events = [json.loads(line) for line in (await read(env, "/events")).text.splitlines()]
        times = [e["t_ms"] for e in events]
        assert times == sorted(times)
        speech_events = [e for e in events if e["type"] == "input_audio_buffer.speech_stopped"]
        assert [e["t_ms"] for e in speech_events] == [f.offset_us // 1000 for f in stopped]
        assert all(isinstance(e["audio_end_ms"], int) for e in speech_events)

        # The turns: latencies from the relay's timestamps, and the barge-in.
        turns = await read(env, "/turns")
        assert turns.status_code == 200, turns.text
        body = turns.json()
        first, second = body["turns"]
        for turn, stop, audio, end in zip((first, second), stopped, first_audio, done, strict=True):
            assert turn["latency_first_audio_ms"] == audio.offset_us // 1000 - stop.offset_us // 1000
            assert turn["latency_done_ms"] == end.offset_us // 1000 - stop.offset_us // 1000
        assert (first["interrupted"], first["interrupted_by"]) == (True, "caller_speech")
        assert first["interrupted_at_ms"] == started[1].offset_us // 1000
        assert second["interrupted"] is False
        assert body["summary"]["interruptions"] == 1
        latencies = [t["latency_first_audio_ms"] for t in body["turns"]]
        assert body["summary"]["latency_first_audio_ms"]["max"] == max(latencies)

        async with stack.relay.app.state.ctx.session_factory() as db:
            parts = [json.loads(r[0])["part"] for r in await audit_rows(db, "detail", action="recording.read")]
        assert sorted(parts) == ["audio_session", "timeline", "turns"]  # each read, one audit entry
