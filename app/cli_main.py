"""`voicelog`, the console script (and `python -m app.cli_main`): the HTTP-only verbs start light.

`tickets`, `access` and `recordings` speak HTTP to a running service (app/workflow/), so they are run from a
root that registers only them: about 0.3 s to start instead of about 2.3 s for the whole command set, which
imports the service (FastAPI, SQLAlchemy, the storage SDKs, every domain). Anything else, `--help` included,
goes to the whole set in `app.cli`; the light root has the same name, help and logging, so a verb behaves the
same whichever root runs it (tests/test_workflow_cli.py runs them through this entry point).
"""

from __future__ import annotations

import sys

import typer

from app.cli_root import new_root
from app.cli_workflow import WORKFLOW_GROUPS, register


def workflow_root() -> typer.Typer:
    """The root with the workflow verbs only."""
    root = new_root()
    register(root)
    return root


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in WORKFLOW_GROUPS:
        workflow_root()()
        return
    from app.cli import main as whole

    whole()


if __name__ == "__main__":
    main()
