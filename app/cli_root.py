"""The root of `voicelog`: its help and the logging every command starts with, shared by the full command set
(`app.cli`) and the light one of the HTTP-only verbs (`app.cli_main`), which must not import the service."""

from __future__ import annotations

import logging
import os

import typer

from app.logs import configure_cli_logging

ROOT_HELP = "voicelog: opt-in, encrypted session logging for realtime voice AI."


def command_logging() -> None:
    """Every command logs to stderr, human-readably: stdout is the command's output alone (`--json`, CSV, a
    report), fit for a pipe. `serve` and `worker` switch to JSON lines, still on stderr. The level is read from
    the environment, not Settings: a bad setting fails the command that reads it, not every command."""
    level = os.environ.get("VOICELOG_LOG_LEVEL", "INFO").upper()
    configure_cli_logging(level if level in logging.getLevelNamesMapping() else "INFO")


def new_root() -> typer.Typer:
    """An empty `voicelog` root with the help and logging above: the whole command set and the light one start here."""
    root = typer.Typer(help=ROOT_HELP, no_args_is_help=True)
    root.callback()(command_logging)
    return root
