"""The stand-in's protocol state machine: client events in, server events out. No I/O here.

Two event families exist: Voice Live and the Realtime beta name output events `response.audio.*`, the
Realtime GA (`/v1/realtime`) names them `response.output_audio.*`. The relay carries either untouched.

Two timings: `instant` answers a turn whole, at once (what tests and benchmarks have relied on); `realistic`
hands the answer to the server as a `PendingResponse`, which the server plays out like a pipeline (a response
delay, then audio in real time), and the caller speaking over it (server VAD) or a `response.cancel` cuts it
off: `response.done` with status `cancelled`.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from app.relay.standin.audio import SAMPLE_RATES, EnergyVad, to_samples, tone

Event = dict[str, Any]

DEFAULT_MODEL = "gpt-4o-realtime-preview"
MAX_ECHO_SECONDS = 5.0
AUDIO_DELTA_MS = 100
RESPONSE_DELAY_S = 0.4
"""Realistic timing: how long the stand-in 'thinks' between the end of a turn and its response."""


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(10)}"


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: objects merge key by key, everything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class PendingResponse:
    """A response to play out (realistic timing): its events in order, and what `cancel` sends instead of the rest."""

    response_id: str
    events: list[Event]
    sent: int = 0
    audio_sent: int = 0


class StandinSession:
    def __init__(self, *, model: str | None, ga_names: bool, realistic: bool = False) -> None:
        self.ga_names = ga_names
        self.realistic = realistic
        self.pending: PendingResponse | None = None  # realistic: a response the server should start playing
        self.interrupted: str | None = None  # realistic: why the response in progress is to be cut off
        self.session: dict[str, Any] = {
            "id": _id("sess"),
            "object": "realtime.session",
            "model": model or DEFAULT_MODEL,
            "modalities": ["text", "audio"],
            "instructions": "",
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "input_audio_sampling_rate": 24000,
            "input_audio_transcription": {"model": "whisper-1"},
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "create_response": True,
            },
            "tools": [],
            "temperature": 0.8,
            "max_response_output_tokens": "inf",
            "expires_at": int(time.time()) + 30 * 60,
        }
        self._vad = self._new_vad()
        self._buffer = bytearray()
        self._item_id: str | None = None
        self._previous_item_id: str | None = None
        self._last_utterance = b""
        self._active_response: str | None = None

    # --- events in --------------------------------------------------------------------------------

    def created(self) -> Event:
        return self._event("session.created", session=self.session)

    def handle_text(self, text: str) -> list[Event]:
        try:
            event: Any = json.loads(text)
        except ValueError:
            return [self._error("invalid_json", "The message is not valid JSON.", None)]
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return [self._error("invalid_event", "An event must be an object with a string `type`.", None)]
        client_event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        handler = self._handlers().get(event["type"])
        if handler is None:
            return [self._error("unknown_event", f"Unknown event type {event['type']!r}.", client_event_id)]
        try:
            events: list[Event] = handler(event, client_event_id)
            return events
        except (KeyError, TypeError, ValueError, binascii.Error):
            return [self._error("invalid_event", f"Malformed {event['type']} event.", client_event_id)]

    def handle_binary(self) -> list[Event]:
        return [self._error("invalid_event", "Binary frames are not part of this protocol.", None)]

    def _handlers(self) -> dict[str, Any]:
        return {
            "session.update": self._on_session_update,
            "input_audio_buffer.append": self._on_append,
            "input_audio_buffer.commit": self._on_commit,
            "input_audio_buffer.clear": self._on_clear,
            "response.create": self._on_response_create,
            "response.cancel": self._on_response_cancel,
            "conversation.item.create": self._on_item_create,
        }

    def _on_session_update(self, event: Event, _cid: str | None) -> list[Event]:
        update = event["session"]
        if not isinstance(update, dict):
            raise TypeError("session must be an object")
        update = {k: v for k, v in update.items() if k not in ("id", "object", "expires_at")}
        self.session = _merge(self.session, update)
        self._vad = self._new_vad()
        return [self._event("session.updated", session=self.session)]

    def _on_append(self, event: Event, _cid: str | None) -> list[Event]:
        audio = base64.b64decode(event["audio"], validate=True)
        self._buffer.extend(audio)
        out: list[Event] = []
        if self._turn_detection() is None:
            return out
        for kind, at_ms in self._vad.feed(to_samples(audio, self._input_format())):
            if kind == "start":
                if self.realistic and self._active_response is not None:
                    self.interrupted = "turn_detected"  # barge-in: the server cuts the response off after this
                self._item_id = _id("item")
                out.append(self._event("input_audio_buffer.speech_started", audio_start_ms=at_ms,
                                       item_id=self._item_id))
            else:
                item_id = self._item_id or _id("item")
                out.append(self._event("input_audio_buffer.speech_stopped", audio_end_ms=at_ms,
                                       item_id=item_id))
                out.extend(self._commit(item_id))
                if (self._turn_detection() or {}).get("create_response", True):
                    out.extend(self._respond())
        return out

    def _on_commit(self, _event: Event, cid: str | None) -> list[Event]:
        if not self._buffer:
            return [self._error("input_audio_buffer_commit_empty", "The input audio buffer is empty.", cid)]
        return self._commit(self._item_id or _id("item"))

    def _on_clear(self, _event: Event, _cid: str | None) -> list[Event]:
        self._buffer.clear()
        self._vad = self._new_vad()
        return [self._event("input_audio_buffer.cleared")]

    def _on_response_create(self, _event: Event, cid: str | None) -> list[Event]:
        if self._active_response is not None:
            return [self._error("conversation_already_has_active_response", "A response is in progress.", cid)]
        return self._respond()

    def _on_response_cancel(self, _event: Event, cid: str | None) -> list[Event]:
        if self.realistic and self._active_response is not None:
            self.interrupted = "client_cancelled"
            return []
        # Instant responses are produced whole; there is never one in progress to cancel.
        return [self._error("response_cancel_not_active", "There is no active response to cancel.", cid)]

    def _on_item_create(self, event: Event, _cid: str | None) -> list[Event]:
        item = dict(event["item"])
        item.setdefault("id", _id("item"))
        item.setdefault("object", "realtime.item")
        item.setdefault("status", "completed")
        previous, self._previous_item_id = self._previous_item_id, item["id"]
        return [self._event("conversation.item.created", previous_item_id=previous, item=item)]

    # --- turns ------------------------------------------------------------------------------------

    def _commit(self, item_id: str) -> list[Event]:
        audio = bytes(self._buffer)
        self._buffer.clear()
        self._last_utterance = audio
        seconds = len(audio) / (self._bytes_per_sample() * self._input_rate())
        previous, self._previous_item_id = self._previous_item_id, item_id
        self._item_id = None
        user_item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "completed",
                     "role": "user", "content": [{"type": "input_audio", "transcript": None}]}
        out = [
            self._event("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id),
            self._event("conversation.item.created", previous_item_id=previous, item=user_item),
        ]
        if self.session.get("input_audio_transcription"):
            out.append(self._event(
                "conversation.item.input_audio_transcription.completed",
                item_id=item_id, content_index=0, transcript=f"speech of {seconds:.2f} s",
            ))
        return out

    def _respond(self) -> list[Event]:
        response_id, item_id = _id("resp"), _id("item")
        self._active_response = response_id
        audio_names = ("response.output_audio", "response.output_audio_transcript") if self.ga_names \
            else ("response.audio", "response.audio_transcript")
        rate = self._input_rate() if self._input_format() == "pcm16" else 24000
        audio = self._last_utterance[: int(MAX_ECHO_SECONDS * rate) * 2] if self._input_format() == "pcm16" \
            else b""
        if not audio:
            audio = tone(0.5, rate)
        seconds = len(audio) / (2 * rate)
        transcript = f"echo of {seconds:.2f} s"
        ref = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
        item = {"id": item_id, "object": "realtime.item", "type": "message", "status": "in_progress",
                "role": "assistant", "content": []}
        response: dict[str, Any] = {"id": response_id, "object": "realtime.response", "status": "in_progress",
                    "status_details": None, "output": [], "usage": None}
        out = [
            self._event("response.created", response=response),
            self._event("response.output_item.added", response_id=response_id, output_index=0, item=item),
            self._event("conversation.item.created", previous_item_id=self._previous_item_id, item=item),
            self._event("response.content_part.added", **ref, part={"type": "audio", "transcript": ""}),
        ]
        for word in transcript.split(" "):
            out.append(self._event(f"{audio_names[1]}.delta", **ref, delta=word + " "))
        step = int(rate * AUDIO_DELTA_MS / 1000) * 2
        for start in range(0, len(audio), step):
            delta = base64.b64encode(audio[start : start + step]).decode()
            out.append(self._event(f"{audio_names[0]}.delta", **ref, delta=delta))
        done_item = dict(item, status="completed",
                         content=[{"type": "audio", "transcript": transcript}])
        out += [
            self._event(f"{audio_names[0]}.done", **ref),
            self._event(f"{audio_names[1]}.done", **ref, transcript=transcript),
            self._event("response.content_part.done", **ref, part={"type": "audio", "transcript": transcript}),
            self._event("response.output_item.done", response_id=response_id, output_index=0, item=done_item),
            self._event("response.done", response=dict(
                response, status="completed", output=[done_item],
                usage={"total_tokens": 12 + len(audio) // 800, "input_tokens": 10,
                       "output_tokens": 2 + len(audio) // 800},
            )),
        ]
        self._previous_item_id = item_id
        if self.realistic:
            self.pending = PendingResponse(response_id, out)
            return []
        self._active_response = None
        return out

    def response_finished(self) -> None:
        """The server played the pending response out, or cut it off."""
        self._active_response = None
        self.interrupted = None

    def cancelled(self, response: PendingResponse) -> list[Event]:
        """What ends a response cut off part-way: its audio done, and `response.done` with status cancelled."""
        names = ("response.output_audio", "response.output_audio_transcript") if self.ga_names \
            else ("response.audio", "response.audio_transcript")
        done = next(e for e in response.events if e["type"] == "response.done")
        first_delta = next((e for e in response.events if e["type"] == f"{names[0]}.delta"), None)
        out: list[Event] = []
        if first_delta is not None and response.audio_sent:
            ref = {k: first_delta[k] for k in ("response_id", "item_id", "output_index", "content_index")}
            out.append(self._event(f"{names[0]}.done", **ref))
        body = dict(done["response"], status="cancelled",
                    status_details={"type": "cancelled", "reason": self.interrupted or "turn_detected"})
        out.append(self._event("response.done", response=body))
        self.response_finished()
        return out

    # --- helpers ----------------------------------------------------------------------------------

    def _turn_detection(self) -> dict[str, Any] | None:
        td = self.session.get("turn_detection")
        return td if isinstance(td, dict) and td.get("type") in ("server_vad", "azure_semantic_vad",
                                                                 "semantic_vad") else None

    def _input_format(self) -> str:
        fmt = self.session.get("input_audio_format", "pcm16")
        return fmt if fmt in SAMPLE_RATES else "pcm16"

    def _input_rate(self) -> int:
        if self._input_format() != "pcm16":
            return SAMPLE_RATES[self._input_format()]
        rate = self.session.get("input_audio_sampling_rate", 24000)
        return rate if isinstance(rate, int) and rate in (8000, 16000, 24000) else 24000

    def _bytes_per_sample(self) -> int:
        return 2 if self._input_format() == "pcm16" else 1

    def _new_vad(self) -> EnergyVad:
        td = self._turn_detection() or {}
        return EnergyVad(
            rate=self._input_rate(),
            threshold=float(td.get("threshold", 0.5)),
            silence_ms=int(td.get("silence_duration_ms", 500)),
            prefix_padding_ms=int(td.get("prefix_padding_ms", 300)),
        )

    def _event(self, event_type: str, **fields: Any) -> Event:
        return {"event_id": _id("event"), "type": event_type, **fields}

    def _error(self, code: str, message: str, client_event_id: str | None) -> Event:
        return self._event("error", error={"type": "invalid_request_error", "code": code, "message": message,
                                           "param": None, "event_id": client_event_id})
