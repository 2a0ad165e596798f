"""The consent cache's knob (`VOICELOG_CONSENT_REFRESH_S`).

A flat field of `app.config.Settings`, which inherits this model, so the variable keeps its name.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class ConsentSettings(BaseModel):
    """How fresh each replica's view of the consents in force is (C1)."""

    consent_refresh_s: float = Field(
        default=2.0, gt=0, le=60,
        description="How often each replica reloads the consents in force. An opt-in records the next session at "
        "once on the replica that accepted it and on every replica within this plus one reload (1 s allowed): "
        "the API's answer gives that moment as `recording_from`. A withdrawal or a closed ticket stops new "
        "recordings at once on its replica and on every replica within the same bound.",
    )
