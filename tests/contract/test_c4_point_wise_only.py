"""C4: no staff API lists, searches or enumerates recordings; every staff read names one request ID."""

from __future__ import annotations

from pathlib import Path

from app.config import Settings
from app.main import create_app


def test_every_recording_route_names_one_request_id_or_belongs_to_the_customer(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, standin_enabled=False, demo_resource=False))
    paths = app.openapi()["paths"]
    recording_routes = [p for p in paths if "recording" in p]
    assert recording_routes  # the playback routes exist
    for path in recording_routes:
        if path.startswith("/customer/resources/{resource}/"):
            continue  # the owning tenant's admin may list their own (checked by tenant in tests/capture)
        assert path.startswith("/recordings/{request_id}/"), path
        assert set(paths[path]) == {"get"}, path
    listing = [p for p in paths if p.rstrip("/").endswith(("/recordings", "/search"))]
    assert listing == ["/customer/resources/{resource}/recordings"]
    for path, operations in paths.items():
        for operation in operations.values():
            names = {p["name"] for p in operation.get("parameters", [])}
            assert not ({"q", "query", "search", "started_after", "started_before"} & names), path
