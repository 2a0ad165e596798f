"""The resource directory's knob (`VOICELOG_RESOURCE_REFRESH_S`).

A flat field of `app.config.Settings`, which inherits this model, so the variable keeps its name.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ResourceSettings(BaseModel):
    """How fresh each replica's in-memory routing of resources is."""

    resource_refresh_s: float = Field(
        default=5.0, gt=0, le=300,
        description="How often each replica reloads every resource's routing into memory. Call set-up reads "
        "only memory; a name not known triggers one early reload. A resource removed on another replica is "
        "still routed here until this replica's next successful reload.",
    )
