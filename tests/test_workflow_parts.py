"""`voicelog recordings get --part` names exactly the recording parts the API serves: every part maps to a
GET route of the OpenAPI document, and every `/recordings/{request_id}/...` GET route has a part."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.main import create_app
from app.workflow.recordings import PART_PATHS, Part


def test_every_part_is_a_recording_route_and_every_recording_route_a_part(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}",
                              standin_enabled=False, demo_resource=False))
    paths = app.openapi()["paths"]
    served = {p.removeprefix("/recordings/{request_id}/") for p, ops in paths.items()
              if p.startswith("/recordings/{request_id}/") and "get" in ops}
    served = {p.replace("{speaker}", speaker) for p in served for speaker in ("caller", "service")}
    assert set(PART_PATHS) == set(Part)
    assert {path for path, _file in PART_PATHS.values()} == served
