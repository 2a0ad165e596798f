from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.input_text import IDENTIFIER_RULE, Identifier, SingleLine

RESOURCE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$|^[a-z0-9]$"


class ResourceCreate(BaseModel):
    name: str = Field(pattern=RESOURCE_NAME_PATTERN, description="Path segment clients use: /resources/{name}/...")
    region: SingleLine = Field(min_length=1, max_length=32,
                               description="One of the configured regions; recordings never leave it (C3).")
    upstream_endpoint: SingleLine = Field(
        min_length=1, max_length=512, description="Base URL of the real pipeline, `wss://...` (or `ws://` for local)."
    )
    owner_tenant: Identifier = Field(description=f"Tenant ID of the owning customer: {IDENTIFIER_RULE}.")


class ResourceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    region: str
    upstream_endpoint: str
    owner_tenant: str
    created_at: datetime
