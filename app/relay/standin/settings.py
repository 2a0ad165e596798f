"""The embedded stand-in upstream's knobs (`VOICELOG_STANDIN_*`, `VOICELOG_DEMO_RESOURCE`).

Flat fields of `app.config.Settings`, which inherits this model, so the variables keep their names.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class StandinSettings(BaseModel):
    """The built-in stand-in upstream `voicelog serve` runs, and the demo resource routed to it."""

    standin_enabled: bool = Field(
        default=True, description="Run the built-in stand-in upstream inside `voicelog serve`."
    )
    standin_host: str = Field(default="127.0.0.1", description="Address the in-process stand-in binds.")
    standin_port: int = Field(default=8765, ge=0, le=65535, description="Port of the in-process stand-in.")
    demo_resource: bool = Field(
        default=True, description="Seed a resource `demo` (first region) whose upstream is the stand-in."
    )
