"""`voicelog tickets create | show | assign | unassign | close`: the ticketing system's calls (role `ticketing`)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from app.workflow.client import api_client, call_json
from app.workflow.options import DEFAULT, JsonOption, TokenOption, UrlOption, emit, run, target

tickets_cli = typer.Typer(help="Support tickets, through the API (a token with the ticketing role).",
                          no_args_is_help=True)
TicketArg = Annotated[str, typer.Argument(help="The ticket's id (as `tickets create` printed it).")]
HEADERS = ("ID", "REF", "RESOURCE", "STATE", "ENGINEERS", "CREATED")


def _rows(ticket: dict[str, Any]) -> list[list[object]]:
    return [[ticket["id"], ticket["external_ref"], ticket["resource"], ticket["state"],
             ", ".join(ticket["engineers"]) or None, ticket["created_at"]]]


def _ticket_call(url: str, token: str | None, as_json: bool, method: str, path: str,
                 body: dict[str, Any] | None = None) -> None:
    def work() -> dict[str, Any]:
        with api_client(target(url, token)) as client:
            answer: dict[str, Any] = call_json(client, method, path, body)
            return answer

    ticket = run(work)
    emit(ticket, as_json, HEADERS, _rows(ticket))


@tickets_cli.command("create")
def create(
    resource: Annotated[str, typer.Argument(help="The customer resource's name.")],
    external_ref: Annotated[str, typer.Argument(help="The ticketing system's number, e.g. INC-20431.")],
    engineer: Annotated[list[str] | None, typer.Option(
        "--engineer", "-e", help="Assign this engineer (OIDC subject) at once; repeat for several.")] = None,
    url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """File a ticket for a resource (POST /tickets)."""
    _ticket_call(url, token, as_json, "POST", "/tickets",
                 {"resource": resource, "external_ref": external_ref, "engineers": engineer or []})


@tickets_cli.command("show")
def show(ticket: TicketArg, url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """One ticket with its engineers (GET /tickets/ID)."""
    _ticket_call(url, token, as_json, "GET", f"/tickets/{quote(ticket, safe='')}")


@tickets_cli.command("assign")
def assign(ticket: TicketArg, engineer: Annotated[str, typer.Argument(help="The engineer's OIDC subject.")],
           url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Assign an engineer (POST /tickets/ID/engineers); only assigned engineers may ask for access."""
    _ticket_call(url, token, as_json, "POST", f"/tickets/{quote(ticket, safe='')}/engineers", {"engineer": engineer})


@tickets_cli.command("unassign")
def unassign(ticket: TicketArg, engineer: Annotated[str, typer.Argument(help="The engineer's OIDC subject.")],
             url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Take an engineer off the ticket; their grants under it end too."""
    _ticket_call(url, token, as_json, "DELETE",
                 f"/tickets/{quote(ticket, safe='')}/engineers/{quote(engineer, safe='')}")


@tickets_cli.command("close")
def close(ticket: TicketArg, url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Close a ticket (POST /tickets/ID/close): its consents end, so recording for it stops."""
    _ticket_call(url, token, as_json, "POST", f"/tickets/{quote(ticket, safe='')}/close")
