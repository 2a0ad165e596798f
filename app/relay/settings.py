"""The relay's knobs (`VOICELOG_RELAY_*`).

Flat fields of `app.config.Settings`, which inherits this model, so the variables keep their public names
(README, docs, the Helm chart and the benchmarks set them). The relay takes this narrower type instead of
importing `app.config`, so importing the relay loads no other domain's settings.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class RelaySettings(BaseModel):
    """The relay's limits: upstream handshake, session lengths, message sizes, admission, data plane."""

    relay_connect_timeout_s: float = Field(
        default=10.0, gt=0, description="Upstream TCP+TLS+WebSocket handshake timeout."
    )
    relay_idle_timeout_s: float = Field(
        default=600.0, gt=0, description="Close a session after this long without a frame in either direction."
    )
    relay_max_session_s: float = Field(
        default=4 * 3600.0, gt=0, description="Hard cap on one session's length."
    )
    relay_max_message_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest WebSocket message relayed (Voice Live: 4 MiB)."
    )
    relay_queue_frames: int = Field(
        default=16, ge=1, description="Messages buffered per direction before the reader is slowed down "
        "(worst case per session: 2 x this x relay_max_message_bytes)."
    )
    relay_drain_timeout_s: float = Field(
        default=30.0, ge=0, description="On shutdown, how long live sessions may finish before a 1001 close."
    )
    relay_ping_interval_s: float | None = Field(
        default=20.0, description="Keepalive ping to the upstream (and, on the direct data plane, to the client); "
        "a ping unanswered by the next one drops that side. None disables."
    )
    relay_max_sessions: int = Field(
        default=400, ge=1, description="Sessions one process relays at once; a call beyond it is refused before "
        "its handshake with 503 `relay_busy` and `Retry-After`, so it lands on another replica instead of making "
        "every call here late. An admitted call is never refused later. Per process: a pod with N workers takes "
        "N times this.",
    )
    relay_busy_loop_lag_s: float = Field(
        default=0.1, gt=0, description="New calls are refused (503 `relay_busy`) while this process's event loop "
        "runs this late: the median of the last second's samples of `voicelog_event_loop_lag_seconds` (a 100 ms "
        "timer), so one pause refuses nobody but a loop late sample after sample does; its live calls' frames "
        "are already waiting that long.",
    )
    relay_data_plane: Literal["direct", "asgi"] = Field(
        default="direct", description="How relayed frames are carried. `direct`: the HTTP server hands each "
        "relayed WebSocket's connection to the relay at its upgrade and frames go from socket to socket in "
        "asyncio protocol callbacks (docs/ARCHITECTURE.md, data plane). `asgi`: the earlier path through uvicorn's "
        "WebSocket protocol, the ASGI app and the `websockets` client, kept for comparison in the benchmarks.",
    )
