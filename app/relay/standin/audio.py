"""Audio helpers for the stand-in: decoding to linear samples, an energy VAD, a tone."""

from __future__ import annotations

import math
import struct
import sys
from array import array

from app.g711 import ALAW_TO_LINEAR, ULAW_TO_LINEAR

PCM_FORMATS = {"pcm16": 2}
SAMPLE_RATES = {"pcm16": 24000, "g711_ulaw": 8000, "g711_alaw": 8000}


def to_samples(audio: bytes, fmt: str) -> array[int]:
    """Linear 16-bit samples of a chunk in the session's input format."""
    if fmt == "g711_ulaw":
        return array("h", (ULAW_TO_LINEAR[b] for b in audio))
    if fmt == "g711_alaw":
        return array("h", (ALAW_TO_LINEAR[b] for b in audio))
    samples = array("h")
    samples.frombytes(audio[: len(audio) - (len(audio) % 2)])
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def rms(samples: array[int], stride: int = 4) -> float:
    """Root mean square over every `stride`-th sample: cheap and plenty for a speech/silence call."""
    picked = samples[::stride]
    if not picked:
        return 0.0
    return math.sqrt(sum(s * s for s in picked) / len(picked))


def tone(duration_s: float, rate: int, freq: float = 440.0, amplitude: int = 6000) -> bytes:
    """A pcm16 little-endian sine tone."""
    n = int(duration_s * rate)
    return struct.pack(f"<{n}h", *(int(amplitude * math.sin(2 * math.pi * freq * i / rate)) for i in range(n)))


class EnergyVad:
    """Server VAD by frame energy: speech starts above the threshold, stops after enough silence."""

    FRAME_MS = 20

    def __init__(self, *, rate: int, threshold: float, silence_ms: int, prefix_padding_ms: int) -> None:
        self.rate = rate
        self.level = 300.0 + threshold * 1000.0
        self.silence_ms = silence_ms
        self.prefix_padding_ms = prefix_padding_ms
        self.position_ms = 0.0
        self.in_speech = False
        self.speech_start_ms = 0.0
        self._silent_for_ms = 0.0
        self._pending = array("h")

    def feed(self, samples: array[int]) -> list[tuple[str, int]]:
        """Returns ("start", audio_start_ms) / ("stop", audio_end_ms) transitions in this chunk."""
        events: list[tuple[str, int]] = []
        self._pending.extend(samples)
        frame = max(1, self.rate * self.FRAME_MS // 1000)
        while len(self._pending) >= frame:
            chunk = self._pending[:frame]
            del self._pending[:frame]
            loud = rms(chunk) >= self.level
            if not self.in_speech and loud:
                self.in_speech = True
                self.speech_start_ms = self.position_ms
                self._silent_for_ms = 0.0
                events.append(("start", int(max(0.0, self.position_ms - self.prefix_padding_ms))))
            elif self.in_speech:
                self._silent_for_ms = 0.0 if loud else self._silent_for_ms + self.FRAME_MS
                if self._silent_for_ms >= self.silence_ms:
                    self.in_speech = False
                    events.append(("stop", int(self.position_ms + self.FRAME_MS)))
            self.position_ms += self.FRAME_MS
        return events
