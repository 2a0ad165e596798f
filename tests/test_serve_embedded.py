"""The quick start: `voicelog serve` on its embedded defaults takes SDK sessions at once, and drains."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import stat
import subprocess
import sys
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


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    env = {**os.environ, "VOICELOG_DATA_DIR": str(tmp_path / "data"),
           "VOICELOG_STANDIN_PORT": str(free_port()), "VOICELOG_RELAY_DRAIN_TIMEOUT_S": "1.5"}
    env.pop("VOICELOG_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli_main", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError((proc.stdout.read() if proc.stdout else b"").decode())
            await asyncio.sleep(0.05)
    try:
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


async def test_sigterm_drains_live_sessions_then_closes_them_with_1001(
    served: tuple[subprocess.Popen[bytes], int, Path]
) -> None:
    proc, port, _ = served
    url = f"ws://127.0.0.1:{port}/resources/demo/voice-live/realtime?x-standin-mode=echo"
    async with connect(url) as ws:
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        await ws.send("still talking")  # inside the drain window the call goes on
        assert await ws.recv() == "still talking"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    # uvicorn re-raises the captured SIGTERM once shut down, the conventional exit for it
    assert await asyncio.to_thread(proc.wait, 20) in (0, -signal.SIGTERM)
