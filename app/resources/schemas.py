from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

RESOURCE_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}[a-z0-9]$|^[a-z0-9]$"


class ResourceCreate(BaseModel):
    name: str = Field(pattern=RESOURCE_NAME_PATTERN, description="Path segment clients use: /resources/{name}/...")
    region: str = Field(description="One of the configured regions; recordings never leave it (C3).")
    upstream_endpoint: str = Field(
        max_length=512, description="Base URL of the real pipeline, `wss://...` (or `ws://` for local)."
    )
    owner_tenant: str = Field(min_length=1, max_length=128, description="Tenant ID of the owning customer.")


class ResourceOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    region: str
    upstream_endpoint: str
    owner_tenant: str
    created_at: datetime
