"""An opt-in takes effect at once on the replica that accepted it (issue 19: a session started 0.24 s after
the 201 was relayed unrecorded, waiting for the consent cache's next reload), and names its ticket by the
reference support gave the customer."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from azure.ai.voicelive.aio import connect as sdk_connect
from azure.ai.voicelive.models import RequestSession
from azure.core.credentials import AzureKeyCredential

from app.identity.settings import IdentitySettings
from app.tickets.consent_cache import RELOAD_ALLOWANCE_S
from tests.fixtures.identity import MintToken
from tests.fixtures.recording import recording_stack
from tests.fixtures.relay import STANDIN_API_KEY, StandinHandle

REFRESH_S = 60.0  # no reload of the consent cache happens during the test: only the opt-in itself can help


async def test_a_session_right_after_the_opt_in_is_recorded(
    tmp_path: Path, standin: StandinHandle, app_db_url: str, identity_settings: IdentitySettings,
    mint_token: MintToken,
) -> None:
    async with recording_stack(tmp_path, standin, database_url=app_db_url, identity=identity_settings,
                               mint_token=mint_token, consent=False, consent_refresh_s=REFRESH_S) as stack:
        ticket = (await stack.api("GET", f"/tickets/{stack.ticket_id}", stack.ticketing)).json()
        granted = await stack.api("POST", f"/customer/resources/{stack.resource}/consents", stack.customer,
                                  json={"ticket_ref": ticket["external_ref"]})
        assert granted.status_code == 201, granted.text
        consent = granted.json()
        assert consent["ticket_id"] == stack.ticket_id
        assert consent["ticket_ref"] == ticket["external_ref"]
        assert datetime.fromisoformat(consent["recording_from"]) == (
            datetime.fromisoformat(consent["not_before"]) + timedelta(seconds=REFRESH_S + RELOAD_ALLOWANCE_S))

        # At once, through the real SDK, on the replica that answered 201.
        async with sdk_connect(endpoint=stack.endpoint, credential=AzureKeyCredential(STANDIN_API_KEY),
                               model="gpt-4o") as conn:
            await conn.session.update(session=RequestSession(instructions="Say LILAC-7"))
            async for event in conn:
                if event.type == "session.updated":
                    break
        request_id = list(standin.standin.sessions)[-1]
        row = await stack.recording(request_id)
        assert row.consent_id == consent["id"]
        assert row.state == "complete"
