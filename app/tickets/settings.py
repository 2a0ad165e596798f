"""The consent cache's knob (`VOICELOG_CONSENT_REFRESH_S`).

A flat field of `app.config.Settings`, which inherits this model, so the variable keeps its name.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ConsentSettings(BaseModel):
    """How fresh each replica's view of the consents in force is (C1)."""

    consent_refresh_s: float = Field(
        default=2.0, gt=0, le=60,
        description="How often each replica reloads the consents in force. A withdrawal or a closed ticket "
        "stops new recordings on every replica within this bound plus one database round trip.",
    )
