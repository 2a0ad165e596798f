"""C2: a recorded session's content is never written unencrypted: blobs, database, logs, temp files.

A session carries a known text marker and a known audio pattern. Every sink is scanned for them raw, in
base64 (all three alignments) and in UTF-16; none may hold them. Decrypting the recording finds both.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from websockets.asyncio.client import connect

from app.capture.frame_log import C2S
from app.capture.models import Recording
from app.identity.settings import IdentitySettings
from app.regions import RegionSettings
from app.storage.layout import RecordingKey
from tests.fixtures.blob import AzuriteRegions
from tests.fixtures.database import PG_HOST, PG_PORT, PG_USER
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle

MARKER = "QUOKKA-MARKER-93e1c7"
AUDIO = struct.pack("<64h", *[(i * 977) % 30000 - 15000 for i in range(64)])  # a pattern no silence has


def needles(data: bytes) -> dict[str, bytes]:
    """The forms a leak could take: raw, base64 at each of the three alignments, UTF-16 LE/BE."""
    out = {"raw": data}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data)
        out[f"base64+{shift}"] = encoded[4 if shift else 0 : -4]  # drop the chars that mix in neighbours
    try:
        text = data.decode()
        out["utf-16-le"] = text.encode("utf-16-le")
        out["utf-16-be"] = text.encode("utf-16-be")
    except UnicodeDecodeError:
        pass
    return out


ALL_NEEDLES = {f"marker/{k}": v for k, v in needles(MARKER.encode()).items()} | {
    f"audio/{k}": v for k, v in needles(AUDIO).items()}


def leaks(haystack: bytes) -> list[str]:
    return [name for name, needle in ALL_NEEDLES.items() if needle in haystack]


@pytest.fixture(params=["local", "azurite"])
def regions(request: pytest.FixtureRequest, tmp_path: Path) -> list[RegionSettings] | None:
    if request.param == "local":
        return None
    azurite: AzuriteRegions = request.getfixturevalue("azurite")
    for server in azurite.servers.values():
        if not server.running:
            server.start()
    return azurite.region_settings(container=f"c2{tmp_path.name[-8:].lower().replace('_', '')}")


def database_bytes(url: str) -> bytes:
    """Everything the database holds: the SQLite files byte for byte, or every PostgreSQL row as text."""
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite+aiosqlite:///"))
        return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={PG_USER} dbname={name}") as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        dump = []
        for table in tables:
            rows = conn.execute(f'SELECT row_to_json(t)::text FROM "{table}" t').fetchall()  # noqa: S608
            dump.extend(r[0] for r in rows)
    return "\n".join(dump).encode()


def files_since(roots: list[Path], since: float) -> bytes:
    """Every file written since `since` under `roots`; other processes' files may vanish while we walk."""
    chunks = []
    for root in roots:
        for directory, _dirs, names in os.walk(root, onerror=lambda _error: None):
            for name in names:
                path = Path(directory) / name
                try:
                    info = path.stat()
                    if path.is_file() and info.st_mtime >= since and info.st_size < 64 * 1024 * 1024:
                        chunks.append(path.read_bytes())
                except OSError:
                    continue
    return b"".join(chunks)


async def test_marker_reaches_no_sink_unencrypted_and_decrypts_back(
    tmp_path: Path, standin: StandinHandle, app_db_url: str, identity_settings: IdentitySettings,
    mint_token: MintToken, regions: list[RegionSettings] | None,
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str],
) -> None:
    started = time.time() - 1
    async with recording_stack(tmp_path, standin, database_url=app_db_url, identity=identity_settings,
                               mint_token=mint_token, regions=regions) as stack:
        url = f"{stack.relay.ws}/resources/{stack.resource}/voice-live/realtime?api-version=2026-07-15"
        async with connect(url, additional_headers={"api-key": STANDIN_API_KEY}) as ws:
            request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
            await ws.recv()  # session.created
            await ws.send(json.dumps({"type": "session.update", "session": {"instructions": f"Say {MARKER}"}}))
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(AUDIO * 200).decode()}))
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": MARKER}]}}))
            await ws.send(AUDIO * 10)  # a binary frame too
            for _ in range(4):
                await ws.recv()
        row = await stack.recording(request_id)
        stores = stack.relay.app.state.ctx.stores
        blob = b"".join([chunk async for chunk in stores.store(row.region).stream(
            RecordingKey(request_id, row.started_at))])
        contents = await stack.contents(request_id)
        async with stack.relay.app.state.ctx.session_factory() as session:
            state = (await session.execute(select(Recording.state).where(Recording.request_id == request_id)))
            assert state.scalar_one() == "complete"
    sinks = {
        "blob": blob,
        "database": database_bytes(app_db_url),
        "logs": (caplog.text + "".join(capfd.readouterr())).encode(),
        "files": files_since([tmp_path, Path(tempfile.gettempdir())], started),
    }
    assert len(blob) > len(AUDIO) * 200
    assert {name: leaks(data) for name, data in sinks.items()} == {name: [] for name in sinks}
    plaintext = b"".join(f.payload for f in contents.frames if f.direction == C2S)
    assert leaks(plaintext)  # the content is there, for those allowed to decrypt it
    assert MARKER.encode() in plaintext
    assert AUDIO * 10 in plaintext
