"""The workflow CLI's verbs (tickets, access, recordings, audit entries), registered on the root `voicelog` app."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Add the workflow sub-commands to `cli`; kept apart so serve's module stays about serving."""
