"""Speech-like test audio: tone bursts separated by silence, pcm16 little-endian."""

from __future__ import annotations

import math
import struct

RATE = 24000
FRAME_MS = 20
FRAME_BYTES = RATE * FRAME_MS // 1000 * 2


def speech_like(seconds: float, rate: int = RATE, marker_hz: float = 220.0) -> bytes:
    """A voiced 'utterance' (harmonics with a syllable envelope) followed by silence to end the turn."""
    voiced = int(seconds * rate * 0.6)
    silence = int(seconds * rate) - voiced
    samples = []
    for i in range(voiced):
        t = i / rate
        envelope = 0.55 + 0.45 * math.sin(2 * math.pi * 4 * t)
        value = sum(math.sin(2 * math.pi * marker_hz * k * t) / k for k in (1, 2, 3))
        samples.append(int(7000 * envelope * value))
    samples.extend([0] * silence)
    return struct.pack(f"<{len(samples)}h", *samples)


def frames(audio: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    return [audio[i : i + frame_bytes] for i in range(0, len(audio), frame_bytes)]
