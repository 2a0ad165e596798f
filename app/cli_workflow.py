"""The workflow CLI's verbs (tickets, access, recordings, audit entries), registered on the root `voicelog` app.

tickets, access and recordings talk to a running service over HTTP with a bearer token (app/workflow/);
`audit list | tail` live with the other audit commands (app/audit/cli.py) and read the database directly.
"""

from __future__ import annotations

import typer

from app.workflow.access import access_cli
from app.workflow.recordings import recordings_cli
from app.workflow.tickets import tickets_cli

WORKFLOW_GROUPS: dict[str, typer.Typer] = {
    "tickets": tickets_cli, "access": access_cli, "recordings": recordings_cli}
"""The verbs that need no database, key or service module: `app.cli_main` runs them from a light root."""


def register(cli: typer.Typer) -> None:
    """Add the workflow sub-commands to `cli`; kept apart so serve's module stays about serving."""
    for name, group in WORKFLOW_GROUPS.items():
        cli.add_typer(group, name=name)
