"""Turn derivation on hand-built timelines: both event families, barge-in, cancel, truncation, errors, gaps."""

from __future__ import annotations

from typing import Any

import pytest

from app.access.playback.turns import derive_turns

PREVIEW = {"audio": "response.audio.delta"}
GA = {"audio": "response.output_audio.delta"}


def s2c(t_ms: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"t_ms": t_ms, "direction": "s2c", "type": kind, **fields}


def c2s(t_ms: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"t_ms": t_ms, "direction": "c2s", "type": kind, **fields}


def answered_turn(family: dict[str, str], *, start: int, stop: int, first_audio: int, done: int, rid: str,
                  audio_ms: int = 100, deltas: int = 3) -> list[dict[str, Any]]:
    """One VAD turn answered with `deltas` audio frames sent at once, then response.done."""
    lines = [s2c(start, "input_audio_buffer.speech_started", audio_start_ms=start - 300, item_id="i1"),
             s2c(stop, "input_audio_buffer.speech_stopped", audio_end_ms=stop - 100, item_id="i1"),
             s2c(stop, "input_audio_buffer.committed", item_id="i1"),
             s2c(first_audio - 5, "response.created", response_id=rid, response_status="in_progress")]
    lines += [s2c(first_audio, family["audio"], response_id=rid, audio_ms=audio_ms) for _ in range(deltas)]
    lines.append(s2c(done, "response.done", response_id=rid, response_status="completed"))
    return lines


@pytest.mark.parametrize("family", [PREVIEW, GA], ids=["voice-live-and-preview", "realtime-ga"])
def test_latencies_run_from_the_speech_stop_to_first_audio_and_to_done(family: dict[str, str]) -> None:
    lines = (answered_turn(family, start=400, stop=1500, first_audio=1820, done=1900, rid="r1")
             + answered_turn(family, start=5000, stop=6000, first_audio=6250, done=6400, rid="r2"))
    report = derive_turns(lines).as_json()
    first, second = report["turns"]
    assert (first["latency_first_audio_ms"], first["latency_done_ms"]) == (320, 400)
    assert (second["latency_first_audio_ms"], second["latency_done_ms"]) == (250, 400)
    assert (first["speech_started_ms"], first["speech_started_audio_ms"]) == (400, 100)
    assert (first["response_audio_ms"], first["audio_playing_until_ms"]) == (300, 2120)
    assert report["summary"]["latency_first_audio_ms"] == {"p50": 250, "max": 320, "count": 2}
    assert report["summary"]["interruptions"] == 0
    assert not first["interrupted"]


@pytest.mark.parametrize("family", [PREVIEW, GA], ids=["voice-live-and-preview", "realtime-ga"])
def test_caller_speaking_while_the_answer_still_plays_is_a_barge_in(family: dict[str, str]) -> None:
    # The answer's 3 s of audio all arrive at 1800 ms and done at 1850 ms: the caller still hears it at 3000 ms.
    lines = answered_turn(family, start=400, stop=1500, first_audio=1800, done=1850, rid="r1", audio_ms=1000)
    lines += [s2c(3000, "input_audio_buffer.speech_started", audio_start_ms=2700),
              s2c(3600, "input_audio_buffer.speech_stopped", audio_end_ms=3500)]
    first, second = derive_turns(lines).as_json()["turns"]
    assert (first["interrupted"], first["interrupted_by"], first["interrupted_at_ms"]) == (True, "caller_speech", 3000)
    assert second["speech_started_ms"] == 3000


def test_caller_speaking_after_the_answer_finished_playing_is_not_a_barge_in() -> None:
    lines = answered_turn(PREVIEW, start=400, stop=1500, first_audio=1800, done=1850, rid="r1", audio_ms=100)
    lines.append(s2c(2200, "input_audio_buffer.speech_started", audio_start_ms=1900))  # audio ended at 2100
    assert derive_turns(lines).as_json()["summary"]["interruptions"] == 0


def test_cancelled_response_and_truncated_item_mark_the_turn_interrupted() -> None:
    cancelled = answered_turn(GA, start=0, stop=900, first_audio=1000, done=1300, rid="r1")
    cancelled[-1]["response_status"] = "cancelled"
    cancelled.insert(-1, c2s(1250, "response.cancel"))
    turn = derive_turns(cancelled).as_json()["turns"][0]
    assert (turn["interrupted_by"], turn["interrupted_at_ms"]) == ("cancelled", 1250)
    assert turn["response_status"] == "cancelled"
    truncated = answered_turn(PREVIEW, start=0, stop=900, first_audio=1000, done=1100, rid="r1")
    truncated.append(s2c(1500, "conversation.item.truncated", item_id="i2"))
    assert derive_turns(truncated).as_json()["turns"][0]["interrupted_by"] == "truncated"


def test_errors_and_gaps_are_listed_and_kept_with_their_turn() -> None:
    lines = answered_turn(PREVIEW, start=0, stop=900, first_audio=1000, done=1100, rid="r1")
    lines += [s2c(1200, "error", error_code="rate_limit_exceeded"),
              {"t_ms": 1300, "type": "gap", "to_ms": 1700, "frames": 12, "bytes": 4000, "reason": "session_cap"}]
    report = derive_turns(lines).as_json()
    assert report["errors"] == [{"at_ms": 1200, "code": "rate_limit_exceeded"}]
    assert report["gaps"] == [{"at_ms": 1300, "to_ms": 1700, "frames": 12, "reason": "session_cap"}]
    assert report["turns"][0]["errors"] == report["errors"]
    assert report["summary"]["errors"] == report["summary"]["gaps"] == 1


def test_without_vad_the_latency_runs_from_the_commit_and_a_client_asked_response_opens_a_turn() -> None:
    lines = [s2c(500, "input_audio_buffer.committed", item_id="i1"),
             s2c(510, "response.created", response_id="r1"),
             s2c(700, "response.audio.delta", response_id="r1", audio_ms=100),
             s2c(800, "response.done", response_id="r1", response_status="completed"),
             c2s(2000, "response.create"),
             s2c(2010, "response.created", response_id="r2"),
             s2c(2100, "response.output_audio.delta", response_id="r2", audio_ms=100),
             s2c(2200, "response.done", response_id="r2", response_status="completed")]
    first, second = derive_turns(lines).as_json()["turns"]
    assert first["latency_first_audio_ms"] == 200
    assert (second["response_id"], second["first_audio_ms"], second["latency_first_audio_ms"]) == ("r2", 2100, None)


def test_lines_out_of_order_are_taken_by_session_time() -> None:
    lines = answered_turn(PREVIEW, start=0, stop=900, first_audio=1000, done=1100, rid="r1")
    assert derive_turns(list(reversed(lines))).as_json() == derive_turns(lines).as_json()
