"""`voicelog serve` with N worker processes on one port (issue 17): one event loop uses one core, a pod has more.

The supervisor binds the listening socket once and starts each worker with the `spawn` context, never `fork`:
a forked copy would share the parent's threads' locks, database pools and the CSPRNG key pool. Each worker
builds its own Settings, app and server and accepts from the shared socket; the kernel hands each connection
to one of them. The supervisor restarts a worker that dies, and on SIGTERM/SIGINT closes its copy of the
listener, asks every worker to drain (SIGTERM, as `DrainingServer` handles it), waits a bounded time, kills
what is left and exits 0. It holds no app, thread or connection of its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType

import structlog
import uvicorn

from app.config import Settings
from app.logs import configure_logging, get_logger
from app.server.siblings import WorkerSlot

log = get_logger("voicelog.workers")

SPAWN = multiprocessing.get_context("spawn")
UVICORN_GRACE_S = 15  # build_server: uvicorn's graceful shutdown may take the drain plus this
STOP_MARGIN_S = 10.0  # after uvicorn's shutdown, the lifespan's (recorder flush, scheduler, pools)
LISTEN_BACKLOG = 2048  # uvicorn's default
QUICK_EXIT_S = 10.0  # a worker that dies younger than this is restarted after a growing pause
RESTART_PAUSE_MAX_S = 30.0
ORPHAN_CHECK_S = 1.0
SUN_PATH_MAX = 107  # bytes of a Unix socket path, without its terminating NUL


class WorkerCountError(Exception):
    """A worker count `voicelog serve` refuses to start with."""


def resolve_worker_count(settings: Settings, *, cpus: int | None = None) -> int:
    """`VOICELOG_WORKERS`, or one per available CPU on PostgreSQL and 1 on SQLite. SQLite's job locks are
    in-process only (app/retention/locks.py): two processes would both run every scheduled job."""
    sqlite = settings.resolved_database_url.startswith("sqlite")
    if settings.workers is None:
        return 1 if sqlite else (cpus or len(os.sched_getaffinity(0)))
    if sqlite and settings.workers > 1:
        raise WorkerCountError(
            f"VOICELOG_WORKERS={settings.workers} needs PostgreSQL: on SQLite the scheduler's and audit keeper's "
            "locks hold within one process only, so every worker would run every job; unset VOICELOG_WORKERS "
            "(or set it to 1), or set VOICELOG_DATABASE_URL to a PostgreSQL database")
    return settings.workers


def stop_timeout_s(settings: Settings) -> float:
    """How long the supervisor waits for its workers after SIGTERM before it kills them: the drain, uvicorn's
    grace after it and the lifespan's own shutdown. The chart's terminationGracePeriodSeconds covers it."""
    return settings.relay_drain_timeout_s + UVICORN_GRACE_S + STOP_MARGIN_S


def bind_listener(host: str, port: int) -> socket.socket:
    """The one listening socket every worker accepts from; connections wait in its backlog while none is up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def make_run_dir(data_dir: Path, count: int) -> Path:
    """The supervisor's private directory (0700) for its workers' sockets: `<data_dir>/run/<pid>`, so that two
    supervisors sharing a data dir never meet, or a temporary directory when that path is too long for a socket."""
    parent = data_dir.resolve() / "run"
    run_dir = parent / str(os.getpid())
    if len(os.fsencode(run_dir / f"worker-{count - 1}.sock")) > SUN_PATH_MAX:
        return Path(tempfile.mkdtemp(prefix="voicelog-run-"))
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_dead_run_dirs(parent)
    shutil.rmtree(run_dir, ignore_errors=True)  # a dead supervisor's that had our pid
    run_dir.mkdir(mode=0o700)
    return run_dir


def _remove_dead_run_dirs(parent: Path) -> None:
    """Run directories of supervisors that were killed before they could remove their own."""
    for entry in parent.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            os.kill(int(entry.name), 0)
        except ProcessLookupError:
            shutil.rmtree(entry, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            continue


def run_worker(slot: WorkerSlot, listener: socket.socket, host: str, port: int, supervisor_pid: int) -> None:
    """A spawned worker's life: its own Settings, logging, app and server, serving the supervisor's socket."""
    from app.cli import build_server  # the CLI imports this module

    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    structlog.contextvars.bind_contextvars(worker=slot.index)  # every log line of this process says which
    server = build_server(settings, host, port, worker=slot, settle_heap=True)
    _stop_when_orphaned(server, supervisor_pid, slot.index)
    server.run(sockets=[listener])


def _stop_when_orphaned(server: uvicorn.Server, supervisor_pid: int, index: int) -> None:
    """A supervisor killed outright cannot stop its workers: each drains and exits once it sees it gone."""

    def watch() -> None:
        while os.getppid() == supervisor_pid:
            time.sleep(ORPHAN_CHECK_S)
        log.warning("worker.orphaned", worker=index, supervisor_pid=supervisor_pid)  # a thread: no bound context
        server.should_exit = True

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


@dataclass
class _Worker:
    slot: WorkerSlot
    process: BaseProcess | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restart_at: float | None = 0.0  # due now: every worker starts at once


class Supervisor:
    """Keeps one worker per slot serving `listener`; see the module's docstring."""

    def __init__(self, *, listener: socket.socket, host: str, port: int, slots: list[WorkerSlot],
                 stop_timeout_s: float) -> None:
        self._listener, self._host, self._port = listener, host, port
        self._workers = [_Worker(slot) for slot in slots]
        self._stop_timeout_s = stop_timeout_s
        self._stopping: int | None = None  # the signal that asked us to stop
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def run(self) -> int:
        """Supervise until SIGTERM or SIGINT, then stop every worker; 0 once they are gone."""
        handled = (signal.SIGTERM, signal.SIGINT)
        previous = {sig: signal.signal(sig, self._on_signal) for sig in handled}
        try:
            while self._stopping is None:
                self._start_due()
                self._wait()
                self._reap()
            log.info("workers.stopping", signal=signal.Signals(self._stopping).name)
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._wake_r.close()
            self._wake_w.close()
        log.info("workers.stopped")
        return 0

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = signum
        with contextlib.suppress(OSError):  # full: a wake-up is already pending
            self._wake_w.send(b"\0")

    def _start_due(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.process is None and worker.restart_at is not None and worker.restart_at <= now:
                self._start(worker)

    def _start(self, worker: _Worker) -> None:
        process = SPAWN.Process(target=run_worker, name=f"voicelog-worker-{worker.slot.index}",
                                args=(worker.slot, self._listener, self._host, self._port, os.getpid()))
        process.start()
        worker.process, worker.started_at, worker.restart_at = process, time.monotonic(), None
        log.info("worker.started", worker=worker.slot.index, pid=process.pid)

    def _wait(self) -> None:
        """Until a worker exits, a signal arrives or a restart falls due."""
        due = [w.restart_at for w in self._workers if w.restart_at is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        sentinels = [w.process.sentinel for w in self._workers if w.process is not None]
        wait([*sentinels, self._wake_r], timeout)
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(64):
                pass

    def _reap(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            process = worker.process
            if process is None or process.is_alive():
                continue
            process.join()
            worker.process = None
            lived = now - worker.started_at
            worker.quick_exits = worker.quick_exits + 1 if lived < QUICK_EXIT_S else 0
            pause = 0.0 if worker.quick_exits == 0 else min(0.5 * 2 ** (worker.quick_exits - 1), RESTART_PAUSE_MAX_S)
            worker.restart_at = now + pause
            log.warning("worker.died", worker=worker.slot.index, pid=process.pid, exitcode=process.exitcode,
                        lived_s=round(lived, 1), restart_in_s=pause)
            process.close()

    def _stop_all(self) -> None:
        """Close our copy of the listener (new connections are refused once every worker has closed its own),
        SIGTERM every worker, wait for their drains, kill what is left after the bound."""
        self._listener.close()
        running = [w.process for w in self._workers if w.process is not None]
        for process in running:
            process.terminate()  # SIGTERM: the worker drains its live calls
        deadline = time.monotonic() + self._stop_timeout_s
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in running:
            if process.is_alive():
                log.warning("worker.killed", pid=process.pid, after_s=self._stop_timeout_s)
                process.kill()
                process.join()
        for worker in self._workers:
            worker.process = None


def serve_workers(settings: Settings, listener: socket.socket, host: str, count: int) -> int:
    """Supervise `count` workers on `listener` (from `bind_listener`) until told to stop, then clean up; the
    exit status of `voicelog serve`."""
    bound_port: int = listener.getsockname()[1]
    run_dir = make_run_dir(settings.data_dir, count)
    slots = [WorkerSlot(index=i, count=count, run_dir=run_dir) for i in range(count)]
    log.info("workers.serving", workers=count, host=host, port=bound_port, supervisor_pid=os.getpid())
    try:
        return Supervisor(listener=listener, host=host, port=bound_port, slots=slots,
                          stop_timeout_s=stop_timeout_s(settings)).run()
    finally:
        listener.close()
        shutil.rmtree(run_dir, ignore_errors=True)
