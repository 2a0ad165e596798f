"""Access knobs: where each team's access events go (`VOICELOG_ACCESS_WEBHOOKS`); the notifier sends them.

`AccessSettings` is a base of `app.config.Settings`, so the variable keeps its flat name.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class TeamWebhook(BaseModel):
    """Where a team's access events go, and the secret they are signed with."""

    team: str = Field(description="Team name (as in /admin/teams).")
    url: str = Field(pattern=r"^https://|^http://127\.0\.0\.1[:/]",
                     description="HTTPS endpoint (plain http only to 127.0.0.1, for tests).")
    secret: SecretStr = Field(description="HMAC-SHA256 key; the receiver checks `X-Voicelog-Signature`.")


class AccessSettings(BaseModel):
    """Where access events are announced."""

    access_webhooks: list[TeamWebhook] = Field(
        default_factory=list,
        description="Per-team webhooks for access events (requested, approved, denied, revoked, expiring "
        "soon, expired), HMAC-signed and retried: JSON list of `{team, url, secret}`.",
    )
