"""How the worker processes of one `voicelog serve` see each other (issue 17).

A request through the shared port lands on one worker, chosen by the kernel. So that /metrics and /readyz
report the whole pod, each worker answers its siblings on a private Unix socket in the supervisor's run
directory (mode 0700, sockets 0600): one line asks (`metrics` or `status`), the answer runs to end of file.
Answers are made from memory; a sibling that does not answer in time is reported unreachable, never waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.logs import get_logger

log = get_logger("voicelog.workers")

Ask = Literal["metrics", "status"]
STATUS_TIMEOUT_S = 0.5  # /readyz answers within 1 s (the chart's probe gives it 2)
METRICS_TIMEOUT_S = 1.0
ANSWER_TIMEOUT_S = 2.0  # a sibling that connects and never asks is dropped


@dataclass(frozen=True)
class WorkerSlot:
    """Which of its supervisor's workers this process is; given to create_app, never read from a global."""

    index: int
    count: int
    run_dir: Path  # the supervisor's private directory, where every worker's socket lives

    def socket_path(self, index: int) -> Path:
        return self.run_dir / f"worker-{index}.sock"

    @property
    def siblings(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]


@dataclass(frozen=True)
class WorkerStatus:
    """What /readyz shows of one worker."""

    index: int
    pid: int | None
    ready: bool
    active_sessions: int | None
    reachable: bool = True

    def as_json(self) -> dict[str, object]:
        return {"index": self.index, "pid": self.pid, "ready": self.ready,
                "active_sessions": self.active_sessions, "reachable": self.reachable}

    @classmethod
    def unreachable(cls, index: int) -> WorkerStatus:
        return cls(index=index, pid=None, ready=False, active_sessions=None, reachable=False)


class SiblingEndpoint:
    """This worker's answers to its siblings: its metrics exposition and its status, both from memory."""

    def __init__(self, slot: WorkerSlot, *, metrics: Callable[[], bytes], status: Callable[[], WorkerStatus]) -> None:
        self._slot, self._metrics, self._status = slot, metrics, status
        self._path = slot.socket_path(slot.index)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)  # left behind by a predecessor that was killed
        self._server = await asyncio.start_unix_server(self._answer, path=str(self._path))
        os.chmod(self._path, 0o600)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._path.unlink(missing_ok=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                ask = await reader.readline()
                if ask == b"metrics\n":
                    writer.write(self._metrics())
                elif ask == b"status\n":
                    writer.write(json.dumps(self._status().as_json()).encode())
                await writer.drain()
        except (TimeoutError, OSError) as exc:
            log.info("workers.sibling_answer_failed", error=type(exc).__name__)
        finally:
            writer.close()


async def ask_sibling(path: Path, ask: Ask, timeout_s: float) -> bytes | None:
    """One sibling's answer, or None if it did not answer in time (not running, restarting, stuck)."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_unix_connection(str(path))
            try:
                writer.write(f"{ask}\n".encode())
                await writer.drain()
                answer = await reader.read()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (TimeoutError, OSError):
        return None
    return answer or None


async def ask_siblings(slot: WorkerSlot, ask: Ask, timeout_s: float) -> dict[int, bytes | None]:
    """Every sibling's answer, asked side by side: the slowest costs `timeout_s`, not the sum."""
    answers = await asyncio.gather(*(ask_sibling(slot.socket_path(i), ask, timeout_s) for i in slot.siblings))
    return dict(zip(slot.siblings, answers, strict=True))


async def worker_statuses(slot: WorkerSlot, own: WorkerStatus) -> list[WorkerStatus]:
    """Every worker's status in index order, this one's read directly."""
    statuses = {slot.index: own}
    for index, answer in (await ask_siblings(slot, "status", STATUS_TIMEOUT_S)).items():
        statuses[index] = _parse_status(index, answer)
    return [statuses[i] for i in range(slot.count)]


def _parse_status(index: int, answer: bytes | None) -> WorkerStatus:
    if answer is None:
        return WorkerStatus.unreachable(index)
    try:
        body = json.loads(answer)
        return WorkerStatus(index=index, pid=int(body["pid"]), ready=bool(body["ready"]),
                            active_sessions=int(body["active_sessions"]))
    except (ValueError, KeyError, TypeError):
        return WorkerStatus.unreachable(index)


async def worker_metrics(slot: WorkerSlot, own: bytes) -> dict[int, bytes | None]:
    """Every worker's exposition by index (None: it did not answer), this one's rendered directly."""
    texts: dict[int, bytes | None] = {slot.index: own}
    texts.update(await ask_siblings(slot, "metrics", METRICS_TIMEOUT_S))
    return dict(sorted(texts.items()))
