"""G.711 (mu-law and A-law) to 16-bit linear PCM: tables for the stand-in's VAD and for playback."""

from __future__ import annotations


def _ulaw_to_linear(u: int) -> int:
    u = ~u & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t <<= (u & 0x70) >> 4
    return (0x84 - t) if (u & 0x80) else (t - 0x84)


def _alaw_to_linear(a: int) -> int:
    a ^= 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if (a & 0x80) else -t


ULAW_TO_LINEAR = [_ulaw_to_linear(i) for i in range(256)]
ALAW_TO_LINEAR = [_alaw_to_linear(i) for i in range(256)]
