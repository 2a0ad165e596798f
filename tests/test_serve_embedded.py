"""The quick start: `voicelog serve` on its embedded defaults takes SDK sessions at once, and drains."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from azure.ai.voicelive.aio import connect as sdk_connect
from azure.core.credentials import AzureKeyCredential
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.relay.audio import frames, speech_like


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


DRAIN_TIMEOUT_S = 5.0  # long enough for a loaded machine to still talk inside the window
READY_WITHIN_S = 60.0  # a cold start (migrations, keys, the stand-in) on a slow, loaded machine


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:] if log.exists() else "(no output)"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, Path]]:
    async with serve_embedded(tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def serve_embedded(tmp_path: Path, **extra_env: str
                         ) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`voicelog serve`, once /readyz says so; its output goes to a file (a pipe nobody reads can fill up and
    stall the server) whose tail explains a start that fails or never finishes."""
    port = free_port()
    # The embedded defaults, whatever this machine's environment sets (a database, a token, a secrets directory).
    inherited = {k: v for k, v in os.environ.items()
                 if k not in {"VOICELOG_DATABASE_URL", "VOICELOG_ADMIN_TOKEN", "VOICELOG_SECRETS_DIR"}}
    env = {**inherited, "VOICELOG_DATA_DIR": str(tmp_path / "data"),
           "VOICELOG_STANDIN_PORT": str(free_port()), "VOICELOG_RELAY_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
           **extra_env}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli_main", "serve", "--port", str(port)],
                                env=env, stdout=sink, stderr=subprocess.STDOUT)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_WITHIN_S
        last = "no answer"
        async with httpx.AsyncClient() as client:
            while True:
                try:
                    response = await client.get(f"http://127.0.0.1:{port}/readyz")
                    if response.status_code == 200:
                        break
                    last = f"{response.status_code} {response.text}"
                except httpx.TransportError as exc:
                    last = repr(exc)
                if proc.poll() is not None:
                    raise RuntimeError(f"voicelog serve exited with {proc.returncode}:\n{tail(log)}")
                if loop.time() > deadline:
                    raise RuntimeError(f"voicelog serve not ready within {READY_WITHIN_S} s (last: {last}):\n"
                                       f"{tail(log)}")
                await asyncio.sleep(0.05)
        yield proc, port, tmp_path / "data"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def test_fresh_serve_takes_sdk_sessions_on_the_demo_resource(
    served: tuple[subprocess.Popen[bytes], int, Path]
) -> None:
    _proc, port, data_dir = served
    types = []
    async with sdk_connect(endpoint=f"http://127.0.0.1:{port}/resources/demo",
                           credential=AzureKeyCredential("any"), model="gpt-4o") as conn:
        for chunk in frames(speech_like(1.5)):
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            types.append(event.type)
            if event.type == "response.done":
                break
    assert "input_audio_buffer.speech_started" in types
    assert (data_dir / "voicelog.db").exists()
    token_file = data_dir / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    async with httpx.AsyncClient() as client:
        listed = await client.get(f"http://127.0.0.1:{port}/admin/resources",
                                  headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
    assert [r["name"] for r in listed.json()] == ["demo"]


async def listener_closed(port: int, *, timeout: float) -> None:
    """Wait until new connections are refused (what a SIGTERM does first); until then /readyz may still answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    answers: Counter[int] = Counter()
    while True:
        async with httpx.AsyncClient() as client:  # a new connection each time: a kept-alive one proves nothing
            try:
                answers[(await client.get(f"http://127.0.0.1:{port}/readyz")).status_code] += 1
            except httpx.ConnectError:
                return
        if loop.time() > deadline:
            raise AssertionError(f"listener still open {timeout} s after SIGTERM; /readyz answered {dict(answers)}")
        await asyncio.sleep(0.02)


async def test_sigterm_drains_live_sessions_then_closes_them_with_1001(
    served: tuple[subprocess.Popen[bytes], int, Path]
) -> None:
    proc, port, _ = served
    url = f"ws://127.0.0.1:{port}/resources/demo/voice-live/realtime?x-standin-mode=echo"
    async with connect(url) as ws:
        proc.send_signal(signal.SIGTERM)
        await listener_closed(port, timeout=DRAIN_TIMEOUT_S)  # the drain starts once the listener is closed
        await ws.send("still talking")  # inside the drain window the call goes on
        assert await ws.recv() == "still talking"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), DRAIN_TIMEOUT_S + 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    # uvicorn re-raises the captured SIGTERM once shut down, the conventional exit for it
    assert await asyncio.to_thread(proc.wait, 20) in (0, -signal.SIGTERM)


async def test_serve_reads_its_secrets_from_the_secrets_dir(tmp_path: Path) -> None:
    """As in a pod: the admin token is a file of the CSI mount, never an environment variable, and it is the
    token /admin/* takes (none is generated into the data dir)."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "VOICELOG_ADMIN_TOKEN").write_text("token-from-the-vault\n")
    async with serve_embedded(tmp_path, VOICELOG_SECRETS_DIR=str(secrets)) as (_, port, data_dir), \
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        accepted = await client.get("/admin/resources", headers={"Authorization": "Bearer token-from-the-vault"})
        refused = await client.get("/admin/resources", headers={"Authorization": "Bearer token-from-the-vaul"})
    assert accepted.status_code == 200
    assert refused.status_code == 401
    assert not (data_dir / "admin-token").exists()
