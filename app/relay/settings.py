"""What the relay reads of the settings: the `VOICELOG_RELAY_*` knobs.

They stay flat fields of `app.config.Settings` (their variable names are public); the relay owns this
protocol instead of importing `app.config`, so importing the relay loads no other domain's settings.
"""

from __future__ import annotations

from typing import Protocol


class RelaySettings(Protocol):
    """The relay's limits; `app.config.Settings` satisfies it."""

    @property
    def relay_connect_timeout_s(self) -> float: ...

    @property
    def relay_idle_timeout_s(self) -> float: ...

    @property
    def relay_max_session_s(self) -> float: ...

    @property
    def relay_max_message_bytes(self) -> int: ...

    @property
    def relay_queue_frames(self) -> int: ...

    @property
    def relay_ping_interval_s(self) -> float | None: ...

    @property
    def relay_data_plane(self) -> str: ...

    @property
    def relay_max_sessions(self) -> int: ...

    @property
    def relay_busy_loop_lag_s(self) -> float: ...
