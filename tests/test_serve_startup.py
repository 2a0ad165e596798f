"""`voicelog serve` as a person meets it (issue 19): a banner and readable logs on a terminal, JSON lines in a
pipe, one clear line for a port already taken, APScheduler's per-run chatter at DEBUG."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from app.logs import configure_logging

ROOT = Path(__file__).resolve().parents[1]
SERVE = [sys.executable, "-m", "app.cli_main", "serve"]
GUARD_S = 120  # only for a hung start: never an assertion on how long anything took


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "VOICELOG_DATA_DIR": str(tmp_path / "data"), "VOICELOG_PORT": str(free_port()),
           "VOICELOG_STANDIN_PORT": str(free_port()), "VOICELOG_RELAY_DRAIN_TIMEOUT_S": "0", **extra}
    for name in ("VOICELOG_DATABASE_URL", "VOICELOG_LOG_FORMAT", "VOICELOG_LOG_LEVEL"):
        env.pop(name, None)
    return env


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def read_until(fd: int, marker: bytes, seen: bytearray) -> None:
    """Read a pty until `marker` shows (or the process closes it)."""
    while marker not in seen:
        ready, _, _ = select.select([fd], [], [], GUARD_S)
        assert ready, f"nothing for {GUARD_S} s; so far:\n{seen.decode(errors='replace')}"
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side closed
            return
        if not chunk:
            return
        seen += chunk


def test_serve_on_a_terminal_prints_a_banner_and_readable_logs(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(SERVE, env=env, cwd=tmp_path, stdin=secondary, stdout=secondary, stderr=secondary)
    os.close(secondary)
    seen = bytearray()
    try:
        read_until(primary, b"Ctrl+C stops.", seen)
        proc.send_signal(signal.SIGINT)
        read_until(primary, b"voicelog.stopped", seen)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(GUARD_S)
        os.close(primary)
    text = seen.decode(errors="replace")
    port = env["VOICELOG_PORT"]
    assert f"Console      http://127.0.0.1:{port}/console" in text
    assert f"API docs     http://127.0.0.1:{port}/docs" in text
    assert "tenant `demo-tenant`" in text
    assert f"Admin token  {tmp_path / 'data' / 'admin-token'}" in text
    assert "voicelog dev token --as alice --role engineer" in text
    assert f"ws://127.0.0.1:{env['VOICELOG_STANDIN_PORT']}" in text
    started = next(line for line in text.splitlines() if "voicelog.started" in line)
    assert not started.lstrip().startswith("{")  # a person's line, not JSON
    assert "\x1b[" in started  # coloured
    assert "Scheduler started" not in text
    assert "Running job" not in text


def test_serve_into_a_pipe_logs_json_lines_without_a_banner(tmp_path: Path) -> None:
    env = serve_env(tmp_path)
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(SERVE, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink)
    try:
        # The orphan sweep's catch-up runs right after start: by its line APScheduler has added, started and
        # run its jobs, each of which it logs at INFO unless demoted.
        while b"retention.sweep.done" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        proc.wait(GUARD_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(GUARD_S)
    lines = log.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON object
    names = {e["event"] for e in events}
    assert {"voicelog.started", "voicelog.listening", "retention.sweep.done", "voicelog.stopped"} <= names
    assert not [e for e in events if e["logger"].startswith("apscheduler")]
    assert "Ctrl+C stops." not in log.read_text()


def test_serve_port_in_use_is_one_line_naming_the_setting(tmp_path: Path, taken_port: int) -> None:
    env = serve_env(tmp_path, VOICELOG_PORT=str(taken_port))
    done = subprocess.run(SERVE, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=GUARD_S,
                          check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: the service's port {taken_port} on 127.0.0.1 is already in use (another voicelog?); stop what "
        "holds it or set VOICELOG_PORT (or --port) to a free port"]
    assert not (tmp_path / "data" / "voicelog.db").exists()  # refused before anything started


def test_standin_port_in_use_is_one_line_naming_its_setting(tmp_path: Path, taken_port: int) -> None:
    env = serve_env(tmp_path, VOICELOG_STANDIN_PORT=str(taken_port))
    done = subprocess.run(SERVE, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=GUARD_S,
                          check=False)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: the stand-in upstream's port {taken_port} on 127.0.0.1 is already in use (another voicelog?); "
        "stop what holds it or set VOICELOG_STANDIN_PORT to a free port"]
    assert "Traceback" not in done.stderr


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """A stream for configure_logging to write to, with the root logger put back afterwards."""
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_scheduler_run_lines_are_debug(level: str, captured_logs: io.StringIO) -> None:
    """A real APScheduler adds, starts, runs and finishes a job: at INFO none of its lines is shown; at DEBUG
    they are, as `debug`."""
    configure_logging(level, "json", captured_logs)
    ran = threading.Event()
    scheduler = BackgroundScheduler(timezone="UTC")
    # An interval job run at once: a one-off job is removed while the shutdown may already be under way.
    scheduler.add_job(ran.set, "interval", hours=1, next_run_time=datetime.now(UTC), id="probe", name="probe")
    scheduler.start()
    assert ran.wait(GUARD_S)
    scheduler.shutdown(wait=True)  # waits for the run to finish and log
    events = [json.loads(line) for line in captured_logs.getvalue().splitlines()]
    from_scheduler = [e for e in events if e["logger"].startswith("apscheduler")]
    if level == "INFO":
        assert from_scheduler == []
    else:
        assert any("Running job" in e["event"] for e in from_scheduler)
        assert {e["level"] for e in from_scheduler} == {"debug"}


def test_log_format_console_forced_into_a_pipe_is_readable(captured_logs: io.StringIO) -> None:
    configure_logging("INFO", "console", captured_logs)
    logging.getLogger("voicelog.test").info("recording.sealed")
    (line,) = captured_logs.getvalue().splitlines()
    assert "recording.sealed" in line
    assert not line.startswith("{")
    assert "\x1b[" not in line  # not a terminal: no colour codes in a file


def test_log_format_auto_into_a_pipe_is_json(captured_logs: io.StringIO) -> None:
    configure_logging("INFO", "auto", captured_logs)
    logging.getLogger("voicelog.test").info("recording.sealed")
    assert json.loads(captured_logs.getvalue())["event"] == "recording.sealed"


async def test_the_heap_is_settled_after_the_apps_start_up_and_before_any_connection_is_taken(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`settle_after_startup`'s full collection holds the event loop 0.3-0.4 s: once the server takes
    connections, that would hold the first calls of a fresh or restarted worker (issue 17). So it runs when the
    app's lifespan has started everything and uvicorn has not yet begun serving."""
    from app import cli, migrate
    from tests.fixtures.relay import relay_settings

    settings = relay_settings(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}")
    await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
    server = cli.build_server(settings, "127.0.0.1", 0, settle_heap=True)
    server.config.loop = "asyncio"
    at_settle: list[tuple[bool, bool]] = []  # (the app had started, the server was serving), at each settle

    def record() -> None:
        at_settle.append((server.lifespan.startup_event.is_set(), bool(getattr(server, "servers", []))))

    monkeypatch.setattr(cli, "settle_after_startup", record)  # and so no gc.freeze() in the test process
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(GUARD_S):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        server.should_exit = True
        await task
    assert at_settle == [(True, False)]
