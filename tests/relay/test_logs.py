"""Credentials pass through to the upstream but never reach a log line, even at DEBUG."""

from __future__ import annotations

import json
import logging

import pytest
from websockets.asyncio.client import connect

from tests.fixtures.relay import STANDIN_API_KEY, RelayHandle, StandinHandle


async def test_credentials_never_appear_in_logs(
    relay: RelayHandle, standin: StandinHandle, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"{relay.ws}/resources/acme/voice-live/realtime?api-version=2026-07-15&api-key={STANDIN_API_KEY}"
    async with connect(url, additional_headers={"api-key": STANDIN_API_KEY,
                                                "Authorization": f"Bearer {STANDIN_API_KEY}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        request_id = ws.response.headers["x-ms-request-id"] if ws.response else ""
    # a refused attempt logs too
    with pytest.raises(Exception, match="401"):
        async with connect(f"{relay.ws}/resources/acme/voice-live/realtime?api-key=wrong-{STANDIN_API_KEY}"):
            pass
    out, err = capfd.readouterr()
    everything = caplog.text + out + err
    assert request_id
    assert request_id in everything  # the session was logged ...
    assert STANDIN_API_KEY not in everything  # ... without its credentials
    assert "[redacted]" in everything
    (seen,) = [s for s in standin.standin.sessions.values() if s.query.get("api-key")]
    assert seen.headers["api-key"] == STANDIN_API_KEY  # they did reach the upstream
