"""The stand-in answers like the pipeline: VAD turns, responses, and protocol errors, never a crash."""

from __future__ import annotations

import base64
import json

import pytest

from app.relay.standin.audio import EnergyVad, to_samples
from app.relay.standin.protocol import StandinSession
from tests.relay.audio import frames, speech_like


def send(session: StandinSession, event: dict[str, object] | str) -> list[dict[str, object]]:
    return session.handle_text(event if isinstance(event, str) else json.dumps(event))


def types(events: list[dict[str, object]]) -> list[object]:
    return [e["type"] for e in events]


def test_session_created_carries_server_vad_and_formats() -> None:
    created = StandinSession(model="gpt-4o", ga_names=False).created()
    assert created["type"] == "session.created"
    session = created["session"]
    assert isinstance(session, dict)
    assert session["model"] == "gpt-4o"
    assert session["turn_detection"]["type"] == "server_vad"
    assert session["input_audio_format"] == "pcm16"
    assert session["expires_at"] > 0


def test_session_update_merges_into_the_session() -> None:
    s = StandinSession(model=None, ga_names=False)
    (updated,) = send(s, {"type": "session.update", "session": {"voice": "echo",
                                                               "turn_detection": {"silence_duration_ms": 300}}})
    assert updated["type"] == "session.updated"
    session = updated["session"]
    assert isinstance(session, dict)
    assert session["voice"] == "echo"
    assert session["turn_detection"] == {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                         "silence_duration_ms": 300, "create_response": True}


def test_speech_then_silence_makes_a_full_turn_with_transcript_and_response() -> None:
    s = StandinSession(model=None, ga_names=False)
    out: list[dict[str, object]] = []
    for chunk in frames(speech_like(2.0)):
        out += send(s, {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()})
    assert types(out)[:4] == ["input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
                              "input_audio_buffer.committed", "conversation.item.created"]
    started, stopped = out[0], out[1]
    assert started["audio_start_ms"] == 0
    assert 1200 <= int(str(stopped["audio_end_ms"])) <= 1800
    transcript = next(e for e in out if e["type"] == "conversation.item.input_audio_transcription.completed")
    assert transcript["transcript"] == "speech of 1.68 s"  # 1.2 s voiced + 0.5 s of silence that ended it
    assert "response.audio.delta" in types(out)
    assert types(out)[-1] == "response.done"
    done = out[-1]["response"]
    assert isinstance(done, dict)
    assert done["status"] == "completed"
    assert done["usage"]["total_tokens"] > 0


def test_ga_path_uses_the_output_audio_event_names() -> None:
    s = StandinSession(model=None, ga_names=True)
    out = send(s, {"type": "response.create"})
    assert "response.output_audio.delta" in types(out)
    assert "response.output_audio_transcript.done" in types(out)
    assert "response.audio.delta" not in types(out)


@pytest.mark.parametrize(("raw", "code"), [
    ("not json", "invalid_json"),
    ("[1, 2]", "invalid_event"),
    ('{"type": 7}', "invalid_event"),
    ('{"type": "no.such.event", "event_id": "c1"}', "unknown_event"),
    ('{"type": "input_audio_buffer.append", "audio": "***"}', "invalid_event"),
    ('{"type": "session.update", "session": 3}', "invalid_event"),
    ('{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty"),
    ('{"type": "response.cancel"}', "response_cancel_not_active"),
])
def test_bad_events_get_the_protocol_error_event(raw: str, code: str) -> None:
    (error,) = send(StandinSession(model=None, ga_names=False), raw)
    assert error["type"] == "error"
    detail = error["error"]
    assert isinstance(detail, dict)
    assert detail["code"] == code
    assert detail["message"]
    assert error["event_id"]


def test_error_names_the_client_event_id() -> None:
    (error,) = send(StandinSession(model=None, ga_names=False), {"type": "nope", "event_id": "evt_42"})
    assert error["error"]["event_id"] == "evt_42"  # type: ignore[index]


def test_commit_clear_and_manual_turns() -> None:
    s = StandinSession(model=None, ga_names=False)
    send(s, {"type": "session.update", "session": {"turn_detection": None}})
    send(s, {"type": "input_audio_buffer.append", "audio": base64.b64encode(speech_like(0.5)).decode()})
    assert types(send(s, {"type": "input_audio_buffer.clear"})) == ["input_audio_buffer.cleared"]
    send(s, {"type": "input_audio_buffer.append", "audio": base64.b64encode(speech_like(0.5)).decode()})
    committed = send(s, {"type": "input_audio_buffer.commit"})
    assert types(committed)[:2] == ["input_audio_buffer.committed", "conversation.item.created"]
    response = send(s, {"type": "response.create"})
    assert types(response)[0] == "response.created"


def test_binary_frames_get_an_error_event() -> None:
    (error,) = StandinSession(model=None, ga_names=False).handle_binary()
    assert error["type"] == "error"


def test_energy_vad_ignores_silence_and_low_noise() -> None:
    vad = EnergyVad(rate=24000, threshold=0.5, silence_ms=500, prefix_padding_ms=300)
    quiet = b"\x10\x00" * 24000
    assert vad.feed(to_samples(quiet, "pcm16")) == []
