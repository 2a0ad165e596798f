"""Entries queued by this process wake its chain keeper as soon as their transaction commits.

Between wakes the keeper polls the inbox (entries queued by other processes, the CLI or a replica that died
before its keeper ran), at `sequencer_interval_s` while entries keep coming and more slowly as it stays quiet
(`sequencer_quiet_poll_s`): an idle process then costs the database one look a second instead of five. The
wake is a hint, never the only way an entry gets chained; it is not `NOTIFY` (docs/AUDIT.md, "Appending").
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

_lock = threading.Lock()
_waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}


def listen(event: asyncio.Event) -> None:
    """`event` is set (on its own loop) whenever a transaction of this process that queued an entry commits."""
    with _lock:
        _waiting[id(event)] = (asyncio.get_running_loop(), event)


def stop_listening(event: asyncio.Event) -> None:
    with _lock:
        _waiting.pop(id(event), None)


def entries_queued() -> None:
    """Run after such a commit (on whichever thread committed it): wake every listening keeper."""
    with _lock:
        waiting = list(_waiting.values())
    for loop, event in waiting:
        with contextlib.suppress(RuntimeError):  # its loop has closed: the keeper is gone
            loop.call_soon_threadsafe(event.set)
