"""The workflow CLI's parts: `voicelog recordings get --part` names exactly the recording parts the API serves
(every part maps to a GET route of the OpenAPI document, and every `/recordings/{request_id}/...` GET route has
a part), and the verbs run from a light root that answers as the whole command set does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.cli import cli
from app.cli_main import workflow_root
from app.config import Settings
from app.main import create_app
from app.workflow.recordings import PART_PATHS, Part

ROOT = Path(__file__).resolve().parents[1]


def test_every_part_is_a_recording_route_and_every_recording_route_a_part(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
                              standin_enabled=False, demo_resource=False))
    paths = app.openapi()["paths"]
    served = {p.removeprefix("/recordings/{request_id}/") for p, ops in paths.items()
              if p.startswith("/recordings/{request_id}/") and "get" in ops}
    served = {p.replace("{speaker}", speaker) for p in served for speaker in ("caller", "service")}
    assert set(PART_PATHS) == set(Part)
    assert {path for path, _file in PART_PATHS.values()} == served


SERVICE_MODULES = ("app.wiring", "app.main", "app.db", "fastapi", "sqlalchemy", "azure.storage.blob", "uvicorn")


def test_the_workflow_verbs_start_without_importing_the_service() -> None:
    """`voicelog tickets|access|recordings` run from a root that loads no database, key or web framework code:
    they start in a fraction of a second, and where only the API is reachable nothing else is needed."""
    probe = ("import sys\nfrom app import cli_main\nsys.argv = ['voicelog', *sys.argv[1:]]\n"
             "try:\n    cli_main.main()\nexcept SystemExit:\n    pass\n"
             f"print([m for m in {SERVICE_MODULES!r} if m in sys.modules], file=sys.stderr)\n")
    for verb in ("tickets", "access", "recordings"):
        run = subprocess.run([sys.executable, "-c", probe, verb, "--help"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr
        assert f"Usage: voicelog {verb}" in run.stdout
        assert run.stderr.strip().splitlines()[-1] == "[]", run.stderr


@pytest.mark.parametrize("args", [
    ["tickets", "--help"], ["access", "--help"], ["recordings", "get", "--help"], ["access", "request", "--help"],
    ["tickets", "create"],  # a missing argument: the same usage error from either root
])
def test_a_workflow_verb_answers_the_same_from_the_light_root_as_from_the_whole_command_set(args: list[str]) -> None:
    """The light root changes how fast a verb starts, never what it says: help, options and usage errors are
    those of the whole `voicelog` command set."""
    light = CliRunner().invoke(workflow_root(), args, prog_name="voicelog")
    whole = CliRunner().invoke(cli, args, prog_name="voicelog")
    assert (light.exit_code, light.output) == (whole.exit_code, whole.output)
    assert light.output.strip()
