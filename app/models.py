"""Every domain's ORM models, imported once so Alembic and tests see one metadata."""

import app.audit.models  # noqa: F401 - registers the audit tables
from app.access.models import AccessRequest, AccessRequestItem
from app.capture.models import Recording
from app.db import Base
from app.resources.models import Resource
from app.tickets.models import Consent, Ticket, TicketAssignment

__all__ = ["AccessRequest", "AccessRequestItem", "Base", "Consent", "Recording", "Resource", "Ticket",
           "TicketAssignment"]
