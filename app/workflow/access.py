"""`voicelog access request | extend | approve | deny | revoke | list`: just-in-time access through the API (C5).

An engineer asks (`request`, `extend` for more time on a grant) and lists their own (`list`); a manager lists
the queue (`list --queue`) and decides (`approve`, `deny`); either ends a grant early (`revoke`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any
from urllib.parse import quote

import typer

from app.workflow.client import api_client, call_json
from app.workflow.options import DEFAULT, JsonOption, TokenOption, UrlOption, emit, run, target

access_cli = typer.Typer(help="Just-in-time access to recordings, through the API.", no_args_is_help=True)
IdArg = Annotated[str, typer.Argument(help="The access request's id (as `access request` or `access list` print).")]
ReasonOption = Annotated[str, typer.Option("--reason", help="Why, one line (at most 200 characters).")]
HEADERS = ("ID", "STATUS", "REQUESTER", "TICKET", "REQUEST IDS", "MINUTES", "DECIDED BY", "EXPIRES")


def _rows(requests: Sequence[dict[str, Any]]) -> list[list[object]]:
    return [[r["id"], r["status"], r["requester"], r["ticket_id"], " ".join(r["request_ids"]),
             r["granted_minutes"] if r["granted_minutes"] is not None else f"{r['requested_minutes']} asked",
             r["decided_by"], r["expires_at"]] for r in requests]


def _call(url: str, token: str | None, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    def work() -> Any:
        with api_client(target(url, token)) as client:
            return call_json(client, method, path, body)

    return run(work)


def _one(url: str, token: str | None, as_json: bool, method: str, path: str, body: dict[str, Any]) -> None:
    answer = _call(url, token, method, path, body)
    emit(answer, as_json, HEADERS, _rows([answer]))


@access_cli.command("request")
def request(
    ticket: Annotated[str, typer.Option("--ticket", "-t", help="The ticket's id; you must be assigned to it.")],
    request_id: Annotated[list[str], typer.Option(
        "--request-id", "-r", help="A request ID the customer named (repeat, up to 20).")],
    justification: Annotated[str, typer.Option(
        "--justification", "-j", help="Why you need it (20 to 2000 characters; the manager reads it).")],
    minutes: Annotated[int, typer.Option("--minutes", "-m", help="How long (5 to 480).")] = 240,
    url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Ask for access to named recordings (engineer); your team's manager decides."""
    _one(url, token, as_json, "POST", "/access/requests",
         {"ticket_id": ticket, "request_ids": request_id, "justification": justification, "duration_minutes": minutes})


@access_cli.command("extend")
def extend(
    access_request: IdArg,
    justification: Annotated[str, typer.Option(
        "--justification", "-j", help="Why more time (20 to 2000 characters, naming the ticket).")],
    minutes: Annotated[int, typer.Option("--minutes", "-m", help="How much more (5 to 480).")] = 240,
    url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Ask for more time before a grant expires (engineer): a new request that needs a new approval."""
    _one(url, token, as_json, "POST", f"/access/requests/{quote(access_request, safe='')}/extend",
         {"justification": justification, "duration_minutes": minutes})


@access_cli.command("approve")
def approve(
    access_request: IdArg,
    minutes: Annotated[int | None, typer.Option("--minutes", "-m", help="Grant for less time than asked.")] = None,
    reason: ReasonOption = "",
    url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Approve a request of your team (manager; never your own)."""
    _one(url, token, as_json, "POST", f"/access/requests/{quote(access_request, safe='')}/approve",
         {"duration_minutes": minutes, "reason": reason})


@access_cli.command("deny")
def deny(access_request: IdArg,
         reason: Annotated[str, typer.Option("--reason", help="Why (needed), one line.")],
         url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """Deny a request of your team, with a reason (manager)."""
    _one(url, token, as_json, "POST", f"/access/requests/{quote(access_request, safe='')}/deny", {"reason": reason})


@access_cli.command("revoke")
def revoke(access_request: IdArg, reason: ReasonOption = "",
           url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False) -> None:
    """End a grant now (its requester, or the manager)."""
    _one(url, token, as_json, "POST", f"/access/requests/{quote(access_request, safe='')}/revoke",
         {"reason": reason})


@access_cli.command("list")
def list_requests(
    queue: Annotated[bool, typer.Option("--queue", help="The requests waiting for you (manager).")] = False,
    url: UrlOption = DEFAULT, token: TokenOption = None, as_json: JsonOption = False,
) -> None:
    """Your requests and grants, newest first, with their status (engineer); --queue: your teams' (manager)."""
    answer = _call(url, token, "GET", "/access/queue" if queue else "/access/requests")
    emit(answer, as_json, HEADERS, _rows(answer))
