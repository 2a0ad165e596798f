"""Resource registry: validated against configured regions (C3) and upstream URL rules."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.audit.actions import Actor, AuditAction, Subjects
from app.audit.service import append_entry
from app.clock import Clock
from app.errors import Conflict, InvalidInput, NotFound
from app.resources.models import Resource
from app.resources.schemas import ResourceCreate


class UnknownRegion(InvalidInput):
    code = "unknown_region"
    title = "The region is not configured"


class InvalidUpstream(InvalidInput):
    code = "invalid_upstream"
    title = "The upstream endpoint is not a usable WebSocket URL"


class ResourceExists(Conflict):
    code = "resource_exists"
    title = "A resource with this name exists"


class ResourceNotFound(NotFound):
    code = "resource_not_found"
    title = "No such resource"


def normalize_upstream(endpoint: str) -> str:
    """`https://x` -> `wss://x`, no query, no fragment, no trailing slash; anything else is refused."""
    parts = urlsplit(endpoint.strip())
    scheme = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}.get(parts.scheme.lower())
    if scheme is None or not parts.hostname:
        raise InvalidUpstream("Use a wss:// (or https://) URL with a host.")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidUpstream("The upstream URL must not carry a query, fragment or credentials.")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


ADMIN_ACTOR = Actor.service("admin-token")


class ResourceInUse(Conflict):
    code = "resource_in_use"
    title = "The resource has tickets; it cannot be removed"


async def add_resource(
    *, session: AsyncSession, clock: Clock, data: ResourceCreate, regions: Sequence[str], actor: Actor = ADMIN_ACTOR,
) -> Resource:
    if data.region not in regions:
        raise UnknownRegion(f"Region must be one of: {', '.join(regions)}.")
    upstream = normalize_upstream(data.upstream_endpoint)
    if await get_resource_by_name(session=session, name=data.name) is not None:
        raise ResourceExists(f"Resource {data.name!r} exists.")
    resource = Resource(
        name=data.name,
        region=data.region,
        upstream_endpoint=upstream,
        owner_tenant=data.owner_tenant,
        created_at=clock.now(),
    )
    session.add(resource)
    await session.flush()
    await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.RESOURCE_CREATED,
                       subjects=Subjects(resource=resource.id),
                       detail={"name": resource.name, "region": resource.region, "tenant": resource.owner_tenant})
    return resource


async def get_resource_by_name(*, session: AsyncSession, name: str) -> Resource | None:
    result = await session.execute(select(Resource).where(Resource.name == name))
    return result.scalar_one_or_none()


async def get_resource(*, session: AsyncSession, resource_id: str) -> Resource | None:
    """One resource by ID (a primary-key get: one lookup, none when the session already holds it)."""
    return await session.get(Resource, resource_id)


async def require_resource(*, session: AsyncSession, name: str) -> Resource:
    resource = await get_resource_by_name(session=session, name=name)
    if resource is None:
        raise ResourceNotFound()
    return resource


async def list_resources(*, session: AsyncSession) -> Sequence[Resource]:
    result = await session.execute(select(Resource).order_by(Resource.name))
    return result.scalars().all()


async def remove_resource(*, session: AsyncSession, clock: Clock, name: str, actor: Actor = ADMIN_ACTOR) -> None:
    """Only a resource nothing refers to (no tickets, hence no consents or recordings) can be removed."""
    resource = await require_resource(session=session, name=name)
    from app.tickets.service import resource_has_tickets  # tickets import this module: not at the top

    if await resource_has_tickets(session=session, resource_id=resource.id):
        raise ResourceInUse()
    await session.delete(resource)
    await session.flush()
    await append_entry(session=session, clock=clock, actor=actor, action=AuditAction.RESOURCE_DELETED,
                       subjects=Subjects(resource=resource.id), detail={"name": resource.name})
