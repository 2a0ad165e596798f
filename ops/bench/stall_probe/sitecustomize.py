"""Stall probe: which code holds a voicelog process's event loop, caught while it does (issue 17).

`voicelog_event_loop_lag_seconds` says that the loop was late; this says by what. Put this directory on the
process's PYTHONPATH (Python imports `sitecustomize` at start) and name a directory for the reports:

    PYTHONPATH=ops/bench/stall_probe VOICELOG_STALL_PROBE_DIR=/tmp/stalls .venv/bin/voicelog serve

A heartbeat runs on the event loop every 5 ms; a watchdog thread looks every 5 ms and, while the heartbeat is
more than `VOICELOG_STALL_PROBE_MS` (30) old, appends the loop thread's stack to `<dir>/stalls.<pid>` with how
late it is. A long stall is sampled several times under one `beat`. Stacks name files, lines and functions,
never values. For benchmarks and debugging only: never in production images (it is not part of `app`).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

_DIR = os.environ.get("VOICELOG_STALL_PROBE_DIR")
_LATE_S = float(os.environ.get("VOICELOG_STALL_PROBE_MS", "30")) / 1000
_beat: list[float] = []
_loop_thread: list[int] = []


def _install() -> None:
    run = asyncio.Runner.run

    def run_with_heartbeat(self: asyncio.Runner, coro: Any, *, context: Any = None) -> Any:
        loop = self.get_loop()
        _loop_thread[:] = [threading.get_ident()]

        def beat() -> None:
            _beat[:] = [time.monotonic()]
            loop.call_later(0.005, beat)

        loop.call_soon(beat)
        return run(self, coro, context=context)

    asyncio.Runner.run = run_with_heartbeat  # type: ignore[method-assign]
    threading.Thread(target=_watch, name="stall-probe", daemon=True).start()


def _watch() -> None:
    assert _DIR is not None
    Path(_DIR).mkdir(parents=True, exist_ok=True)
    with open(Path(_DIR) / f"stalls.{os.getpid()}", "a") as out:
        while True:
            time.sleep(0.005)
            if not _beat or not _loop_thread:
                continue
            beat = _beat[0]
            late = time.monotonic() - beat
            frame = sys._current_frames().get(_loop_thread[0]) if late > _LATE_S else None
            if frame is not None:
                stack = "".join(traceback.format_stack(frame, limit=30))
                out.write(f"--- stall {late * 1000:.0f} ms (beat {beat:.3f})\n{stack}\n")
                out.flush()


if _DIR:
    _install()
