"""Alembic, driven from code: `voicelog db upgrade|downgrade` and the test fixtures use this."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from app.db import create_engine
from app.db_privileges import (
    GrantSummary,
    RoleAssessment,
    RoleFacts,
    assess_role,
    grant_service_privileges_at,
    inspect_role,
)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolation would read '%' in passwords; escape it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_heads(database_url: str) -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())


def grant_service_role(database_url: str, role: str) -> GrantSummary:
    """After migrating: give the service role exactly its privileges (app/db_privileges.py), as the owner."""
    return asyncio.run(grant_service_privileges_at(database_url, role))


def check_role(database_url: str, role: str | None = None) -> tuple[RoleFacts, RoleAssessment]:
    """What `role` (default: the connecting role) can do here, and whether that lets it rewrite the audit trail."""

    async def run() -> tuple[RoleFacts, RoleAssessment]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                facts = await inspect_role(conn, role)
            return facts, assess_role(facts)
        finally:
            await engine.dispose()

    return asyncio.run(run())
