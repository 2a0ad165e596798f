"""Every domain's ORM models, imported once so Alembic and tests see one metadata."""

from app.db import Base
from app.resources.models import Resource

__all__ = ["Base", "Resource"]
