from __future__ import annotations

from fastapi import APIRouter, status

from app.deps import AdminDep, ClockDep, SessionDep, SettingsDep
from app.resources import service
from app.resources.directory import ResourcesDep
from app.resources.schemas import ResourceCreate, ResourceOut
from app.transaction import after_commit

router = APIRouter(prefix="/admin/resources", tags=["admin: resources"])


@router.post("", status_code=status.HTTP_201_CREATED, summary="Register a customer resource")
async def create_resource(
    body: ResourceCreate, _admin: AdminDep, session: SessionDep, clock: ClockDep, settings: SettingsDep
) -> ResourceOut:
    """Register a Voice Live resource. Its region must be configured; recordings stay in it (C3)."""
    resource = await service.add_resource(
        session=session, clock=clock, data=body, regions=settings.region_names
    )
    return ResourceOut.model_validate(resource)


@router.get("", summary="List registered resources")
async def list_resources(_admin: AdminDep, session: SessionDep) -> list[ResourceOut]:
    return [ResourceOut.model_validate(r) for r in await service.list_resources(session=session)]


@router.get("/{name}", summary="Show one resource")
async def show_resource(name: str, _admin: AdminDep, session: SessionDep) -> ResourceOut:
    return ResourceOut.model_validate(await service.require_resource(session=session, name=name))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove a resource")
async def delete_resource(name: str, _admin: AdminDep, session: SessionDep, clock: ClockDep,
                          resources: ResourcesDep) -> None:
    """Only a resource with no tickets. This replica stops routing its sessions at once, every other
    replica at its next successful reload (every `VOICELOG_RESOURCE_REFRESH_S`)."""
    await service.remove_resource(session=session, clock=clock, name=name)
    after_commit(session, lambda: resources.forget(name))  # a reload begun after the commit sees it gone
