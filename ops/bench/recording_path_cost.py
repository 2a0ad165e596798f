"""Recording's CPU per frame, in-process: what the tap adds on the relay's event loop and what the sealer spends.

Load-insensitive beside `recording_overhead.py`: it counts the CPU time of this thread only, with fake
transports (so no socket reads or writes, which dominate the real per-frame cost), best of 5 rounds. Frames are
1.3 KiB `input_audio_buffer.append` text messages, alternately client -> upstream (masked) and upstream ->
client. Printed: the relay's CPU per frame without and with a recording tap, the sealer's per frame (cut into
segments, encode, seal, copy to bytes, at 200 frames a segment as one session's 2 s), and the recorded path
against the unrecorded one. With `--baseline <checkout>` (e.g. a `git worktree` of an earlier commit) the same
is measured for that checkout first, in a subprocess on this interpreter. Figures are printed, never asserted.

    .venv/bin/python ops/bench/recording_path_cost.py [--frames 20000] [--baseline /tmp/vl-base]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
AUDIO = base64.b64encode(os.urandom(960)).decode()
PER_SEGMENT = 200  # frames in one session's 2 s segment, both ways at 50 a second


def event(i: int) -> bytes:
    return f'{{"type":"input_audio_buffer.append","id":"{i:08d}","audio":"{AUDIO}"}}'.encode()


class FakeTransport:
    """Takes writes and drops them: the socket's cost is left out."""

    def __init__(self) -> None:
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return False


def text_frame(payload: bytes, key: bytes | None) -> bytes:
    from app.relay.wire import apply_mask
    head = bytes((0x81, (0x80 if key else 0) | 126)) + len(payload).to_bytes(2, "big")
    return head + key + apply_mask(payload, key) if key else head + payload


async def relay_cost(frames: int, tapped: bool) -> tuple[float, Any]:
    """ns of this thread's CPU per relayed frame, and the recording (to seal from) when tapped."""
    from app.capture import recorder
    from app.capture.buffer import FrameBuffer, MemoryBudget
    from app.capture.lifecycle import Phase
    from app.relay.legs import ClientLeg, UpstreamLeg
    from app.relay.session import SessionStats, TapGuard

    class Session(TapGuard):
        def __init__(self, tap: Any) -> None:
            self.tap, self._tap_start_ns, self.stats = tap, time.monotonic_ns(), SessionStats()

        def sample_latency(self, direction: Any, seconds: float) -> None:
            pass

    client, upstream = ClientLeg(1 << 24), UpstreamLeg(1 << 24)
    client.peer, upstream.peer = upstream, client
    client.transport, upstream.transport = FakeTransport(), FakeTransport()  # type: ignore[assignment]
    live = None
    if tapped:
        buffer = FrameBuffer(budget=MemoryBudget(1 << 40), session_cap=1 << 40)
        live = recorder.LiveRecording(info=None, consent=None, buffer=buffer, key=None,  # type: ignore[arg-type]
                                      opened_mono=time.monotonic(), phase=Phase.STREAMING)
    session = Session(recorder.RecordingTap(live) if live is not None else None)
    client.session = upstream.session = session  # type: ignore[assignment]
    from_client = [text_frame(event(i), b"\x01\x02\x03\x04") for i in range(PER_SEGMENT)]
    from_upstream = [text_frame(event(i), None) for i in range(PER_SEGMENT)]
    started = time.thread_time()
    for i in range(frames // 2):
        client.data_received(from_client[i % PER_SEGMENT])
        upstream.data_received(from_upstream[i % PER_SEGMENT])
        if live is not None and i % PER_SEGMENT == PER_SEGMENT - 1:
            live.buffer.take()  # taken every so often, as the sealer does
    return (time.thread_time() - started) / frames * 1e9, live


def seal_cost(frames: int, live: Any) -> float:
    """ns of CPU per frame to cut, encode, seal and copy one session's segments."""
    from app.capture import recorder
    from app.capture.buffer import split_for_segments
    from app.capture.frame_log import C2S, S2C, TEXT
    from app.vault.segments import SegmentWriter

    writer = SegmentWriter(os.urandom(32), region="eastus", request_id="r" * 32)
    for i in range(frames):
        live.buffer.add(C2S if i % 2 else S2C, TEXT, i * 20_000, event(i))
    items, _ = live.buffer.take()
    started = time.thread_time()
    for k in range(0, len(items), PER_SEGMENT):
        for run, _ in split_for_segments(items[k:k + PER_SEGMENT], 1 << 20, 0):
            bytes(writer.seal(recorder.encode_items(run, None)))
    return (time.thread_time() - started) / len(items) * 1e9


async def measure(frames: int) -> None:
    best: dict[str, float] = {}
    for _ in range(5):
        for name, tapped in (("plain", False), ("recorded", True)):
            ns, live = await relay_cost(frames, tapped)
            best[name] = min(best.get(name, float("inf")), ns)
        best["seal"] = min(best.get("seal", float("inf")), seal_cost(frames, live))
    total = best["recorded"] + best["seal"]
    print(f"{os.getcwd()}: relay per frame {best['plain']:.0f} ns unrecorded, {best['recorded']:.0f} ns recorded "
          f"(the tap adds {best['recorded'] - best['plain']:.0f} ns); sealer {best['seal']:.0f} ns per frame; "
          f"recorded path x{total / best['plain']:.2f} the unrecorded", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout, measured first")
    parser.add_argument("--here", action="store_true", help=argparse.SUPPRESS)  # measure the working directory
    args = parser.parse_args()
    if args.here:
        sys.path.insert(0, os.getcwd())
        asyncio.run(measure(args.frames))
        return
    for root in ([args.baseline.resolve()] if args.baseline else []) + [ROOT]:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--here", "--frames", str(args.frames)],
                       cwd=root, check=True)


if __name__ == "__main__":
    main()
