"""Issue 15: schemathesis over every route of the OpenAPI schema, for every kind of caller, finds no 5xx.

In-process (ASGI, with the app's lifespan), on one SQLite database, with a fixed seed: each operation gets a
few schema-valid and a few schema-violating examples from each of the 8 callers (no token, the admin token,
and one token per role, each backed by an active staff record where the role needs one). WebSocket routes
are not in the OpenAPI schema, so they are not exercised here. The example count is bounded so the whole
run fits the CI budget (well under 2 minutes on 2 cores).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.python import asgi

from app.config import Settings
from app.identity.principal import Role
from app.identity.settings import IdentitySettings
from app.main import create_app
from tests.fixtures.identity import MintToken, bearer
from tests.fixtures.relay import TEST_ADMIN_TOKEN

EXAMPLES_PER_MODE = 8  # per operation and mode (valid / invalid), each sent by all 8 callers
SEED = 20_150_615
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)


@dataclass(frozen=True)
class ServerError:
    caller: str
    operation: str
    status: int
    curl: str


@pytest.fixture
def fuzzed_app(migrated_databases: dict[str, str], tmp_path: Path, identity_settings: IdentitySettings,
               mint_token: MintToken) -> Iterator[tuple[Any, dict[str, dict[str, str]]]]:
    """The app on a private SQLite copy, with a resource, a team, a ticket and one staff record per staff role."""
    template = Path(migrated_databases["sqlite"].removeprefix("sqlite+aiosqlite:///"))
    shutil.copyfile(template, tmp_path / "fuzz.db")
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}",
                              standin_enabled=False, demo_resource=False, admin_token=TEST_ADMIN_TOKEN,
                              identity=identity_settings))
    tag = uuid4().hex[:6]
    admin = bearer(TEST_ADMIN_TOKEN)
    staff = {role: f"{role.value}-{tag}" for role in (Role.ENGINEER, Role.MANAGER, Role.AUDITOR, Role.ADMIN)}
    with asgi.get_client(app) as client:
        def ok(response: Any) -> None:
            assert response.status_code < 300, response.text

        ok(client.post("/admin/resources", headers=admin, json={
            "name": f"res-{tag}", "region": "eastus", "upstream_endpoint": "wss://up.example",
            "owner_tenant": f"tenant-{tag}"}))
        ok(client.post("/admin/teams", headers=admin, json={"name": f"team-{tag}"}))
        for role, subject in staff.items():
            ok(client.post("/admin/staff", headers=admin, json={
                "subject": subject, "display_name": role.value, "team": f"team-{tag}", "roles": [role.value]}))
        ok(client.post(f"/admin/teams/team-{tag}/managers", headers=admin, json={"subject": staff[Role.MANAGER]}))
        ok(client.post("/tickets", headers=bearer(mint_token(f"ticketing-{tag}", [Role.TICKETING])), json={
            "resource": f"res-{tag}", "external_ref": f"INC-{tag}", "engineers": [staff[Role.ENGINEER]]}))
    callers = {
        "no_token": {},
        "admin_token": admin,
        "customer_admin": bearer(mint_token(f"customer-{tag}", [Role.CUSTOMER_ADMIN], tenant=f"tenant-{tag}")),
        "ticketing": bearer(mint_token(f"ticketing-{tag}", [Role.TICKETING])),
        **{role.value: bearer(mint_token(subject, [role])) for role, subject in staff.items()},
    }
    try:
        yield app, callers
    finally:
        asgi.shutdown_lifespans()


@pytest.mark.slow
def test_no_route_answers_any_caller_with_a_server_error(fuzzed_app: tuple[Any, dict[str, dict[str, str]]]) -> None:
    app, callers = fuzzed_app
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 40  # every API route is in the schema
    started = time.monotonic()
    # Generating is most of the cost, so each example is made once and sent by every caller.
    cases = [case for operation in operations for mode in MODES for case in _examples(operation, mode)]
    errors: list[ServerError] = []
    for caller, headers in callers.items():
        for case in cases:
            try:
                response = case.call(headers=dict(headers))  # call() adds its own headers to the dict it gets
            except Exception as exc:  # the app raised past its 500 handler: a server error too
                errors.append(ServerError(caller, case.operation.label, 500, f"{exc!r}: {case.as_curl_command()}"))
                continue
            try:
                case.validate_response(response, checks=[not_a_server_error], headers=headers)
            except FailureGroup:
                errors.append(ServerError(caller, case.operation.label, response.status_code,
                                          case.as_curl_command(headers=headers)))
    print(f"schemathesis: {len(operations)} operations, {len(cases)} examples x {len(callers)} callers "  # noqa: T201
          f"in {time.monotonic() - started:.1f} s")
    assert not errors, "\n".join(f"{e.caller} {e.operation}: {e.status}\n    {e.curl}" for e in errors[:20])


def _examples(operation: Any, mode: schemathesis.GenerationMode) -> list[schemathesis.Case]:
    """A fixed set of examples of one operation (same seed, same examples on every run)."""
    found: list[schemathesis.Case] = []

    @seed(SEED)
    @settings(max_examples=EXAMPLES_PER_MODE, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(mode))
    def collect(case: schemathesis.Case) -> None:
        found.append(case)

    try:
        collect()
    except Unsatisfiable:
        assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to break in an operation without inputs
    return found
