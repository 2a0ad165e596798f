"""Every domain's ORM models, imported once so Alembic and tests see one metadata."""

import app.audit.models  # noqa: F401 - registers the audit tables
from app.access.models import AccessRequest, AccessRequestItem
from app.access.saw.models import Saw  # noqa: F401 - registers the SAW registry
from app.capture.models import Recording
from app.console.models import ConsoleSessionRow  # noqa: F401 - registers console sessions
from app.db import Base
from app.identity.staff.models import Staff, StaffRole, Team, TeamManager  # noqa: F401 - staff directory
from app.resources.models import Resource
from app.retention.models import RetentionBucket  # noqa: F401 - registers the retention tables
from app.tickets.models import Consent, Ticket, TicketAssignment

__all__ = ["AccessRequest", "AccessRequestItem", "Base", "Consent", "Recording", "Resource", "Ticket",
           "TicketAssignment"]
