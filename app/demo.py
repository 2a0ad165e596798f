"""`voicelog demo` (and `python -m app.demo`): the whole story on the embedded defaults, in one command.

It starts the service as `make serve` runs it (SQLite, local store, dev issuer, stand-in upstream), plus the
LOCAL DEVELOPMENT SAW (`voicelog dev saw`) and its nginx when nginx is installed; then, through the public
API as each role would, hires a small cast, files a ticket, opts the `demo` resource in (tenant
`demo-tenant`) and runs a short session through the real azure-ai-voicelive SDK until it is recorded. It
prints where each role goes next and the commands to ask for access, approve it and play the call back, and
keeps the service running until Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from app.access.saw.local import DEFAULT_SAW_PORT, LocalSaw, local_saw_label, nginx_binary, write_local_saw
from app.access.saw.settings import SawSettings
from app.config import Settings
from app.identity.dev_issuer import DevIssuer
from app.identity.principal import Role
from app.logs import configure_cli_logging

RESOURCE = "demo"
TENANT = "demo-tenant"
TEAM = "demo-support"
ENGINEER, MANAGER, AUDITOR, CUSTOMER, TICKETING = (
    "demo-engineer", "demo-manager", "demo-auditor", "demo-customer", "demo-ticketing")
RECORD_ATTEMPTS = 8
NOT_RECORDED_AFTER_S = 3.0  # a recorded session's row exists when it ends; give the recorder this long
SETTLED_WITHIN_S = 30.0
RATE = 24000
JUSTIFICATION = "{ref}: the caller says the assistant cut them off; I need to hear the turn."


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and what the service answered."""


@dataclass(frozen=True)
class DemoOptions:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    standin_port: int = 8765
    saw_port: int = DEFAULT_SAW_PORT
    start_nginx: bool = True


@dataclass(frozen=True)
class DemoWorld:
    base_url: str
    ticket_id: str
    ticket_ref: str
    consent_id: str
    request_id: str
    saw: LocalSaw
    nginx_running: bool


def demo_settings(options: DemoOptions) -> Settings:
    """The embedded defaults (as `make serve`), with the local development SAW's nginx trusted."""
    return Settings(data_dir=options.data_dir.resolve(), host=options.host, port=options.port,
                    standin_port=options.standin_port, demo_resource=True, standin_enabled=True,
                    saw=SawSettings(local_dev=True))


class _Api:
    """The service's public API as one role sees it: a bearer token and one clear error per refused step."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client, self.headers = client, {"Authorization": f"Bearer {token}"}

    async def call(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201), tolerate: str | None = None,
                   **kwargs: Any) -> Any:
        response = await self.client.request(method, path, headers=self.headers, **kwargs)
        if response.status_code in ok:
            return response.json()
        if tolerate is not None and response.status_code == 409 and tolerate in response.text:
            return None  # already there from an earlier demo in this data dir
        raise DemoError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")


async def _hire_cast(admin: _Api, saw: LocalSaw) -> None:
    await admin.call("POST", "/admin/teams", json={"name": TEAM}, tolerate="")
    for subject, roles in ((ENGINEER, ["engineer"]), (MANAGER, ["manager"]), (AUDITOR, ["auditor"])):
        await admin.call("POST", "/admin/staff", tolerate="", json={
            "subject": subject, "display_name": subject.replace("-", " ").title(), "team": TEAM, "roles": roles})
    await admin.call("POST", f"/admin/teams/{TEAM}/managers", json={"subject": MANAGER}, tolerate="")
    await admin.call("POST", "/admin/saws", tolerate="saw_exists", json={
        "owner": ENGINEER, "label": local_saw_label(ENGINEER), "cert_pem": saw.cert_pem})


def _speech_then_silence() -> list[bytes]:
    """0.9 s of a voiced tone then 0.7 s of silence (the stand-in's VAD ends the turn), in 20 ms frames."""
    from app.relay.standin.audio import tone

    audio = tone(0.9, RATE, freq=220.0) + bytes(int(0.7 * RATE) * 2)
    step = RATE // 50 * 2
    return [audio[i:i + step] for i in range(0, len(audio), step)]


async def _sdk_session(base_url: str, correlation_id: str) -> None:
    """One short call through the relay with the real azure-ai-voicelive SDK, to the stand-in upstream."""
    import base64

    from azure.ai.voicelive.aio import connect
    from azure.core.credentials import AzureKeyCredential

    async with (asyncio.timeout(30),
                connect(endpoint=f"{base_url}/resources/{RESOURCE}", credential=AzureKeyCredential("demo-key"),
                        model="gpt-4o", headers={"x-ms-client-request-id": correlation_id}) as conn):
        for chunk in _speech_then_silence():
            await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())
        async for event in conn:
            if event.type == "response.done":
                break


async def _settled_recording(customer: _Api, correlation_id: str, loop_time: Callable[[], float]) -> str | None:
    """The request ID once the session's recording is complete; None when it was not recorded at all."""
    ended = loop_time()
    while True:
        rows = await customer.call("GET", f"/customer/resources/{RESOURCE}/recordings",
                                   params={"correlation_id": correlation_id})
        if rows and rows[0]["state"] in ("complete", "incomplete"):
            return str(rows[0]["request_id"])
        waited = loop_time() - ended
        if (not rows and waited > NOT_RECORDED_AFTER_S) or waited > SETTLED_WITHIN_S:
            return None
        await asyncio.sleep(0.2)


async def record_session(base_url: str, customer: _Api) -> str:
    """Calls until one is recorded: the opt-in takes effect once the consent is in force on this replica
    (checked through the customer's list of their recordings, never assumed after a sleep)."""
    loop = asyncio.get_running_loop()
    for _attempt in range(RECORD_ATTEMPTS):
        correlation_id = f"demo-{uuid.uuid4()}"
        await _sdk_session(base_url, correlation_id)
        request_id = await _settled_recording(customer, correlation_id, loop.time)
        if request_id is not None:
            return request_id
    raise DemoError(f"no session was recorded after {RECORD_ATTEMPTS} calls; is the consent active?")


async def build_world(settings: Settings, issuer: DevIssuer, admin_token: str, saw: LocalSaw,
                      nginx_running: bool) -> DemoWorld:
    """Cast, ticket, opt-in and one recorded call, each through the API of the role that does it."""
    base_url = f"http://127.0.0.1:{settings.port}"

    def mint(subject: str, role: Role, tenant: str | None = None) -> str:
        return issuer.mint(subject, [role], tenant, timedelta(hours=1))

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        await _hire_cast(_Api(client, admin_token), saw)
        ticketing = _Api(client, mint(TICKETING, Role.TICKETING))
        ref = f"DEMO-{datetime.now(UTC):%Y%m%d-%H%M%S}"
        ticket = await ticketing.call("POST", "/tickets", json={
            "resource": RESOURCE, "external_ref": ref, "engineers": [ENGINEER]})
        customer = _Api(client, mint(CUSTOMER, Role.CUSTOMER_ADMIN, TENANT))
        consent = await customer.call("POST", f"/customer/resources/{RESOURCE}/consents",
                                      json={"ticket_id": ticket["id"], "days": 7})
        request_id = await record_session(base_url, customer)
    return DemoWorld(base_url, ticket["id"], ref, consent["id"], request_id, saw, nginx_running)


def _voicelog_command() -> str:
    script = Path(sys.executable).with_name("voicelog")
    return str(script) if script.exists() else "voicelog"


def guide(world: DemoWorld, settings: Settings, nginx: str | None) -> str:
    """What to open next, for each role, and the commands that ask for, approve and play back the call."""
    saw, base = world.saw, world.base_url
    voicelog = _voicelog_command()
    ask = json.dumps({"ticket_id": world.ticket_id, "request_ids": [world.request_id],
                      "justification": JUSTIFICATION.format(ref=world.ticket_ref), "duration_minutes": 60})
    nginx_line = ("running (stopped with the demo)" if world.nginx_running else
                  f"not running: install nginx, then run  {saw.nginx_command(nginx or 'nginx')}")
    env = f"VOICELOG_DATA_DIR={shlex.quote(str(settings.data_dir))} VOICELOG_PORT={settings.port}"
    return f"""
voicelog demo: the world is in place (data in {settings.data_dir})

  resource   {RESOURCE} (tenant {TENANT}), region {settings.regions[0].name}
  ticket     {world.ticket_ref} (id {world.ticket_id}), engineer {ENGINEER} assigned
  consent    {world.consent_id}: recording on for 7 days
  recorded   request ID {world.request_id}
  local SAW  {saw.url} ({nginx_line}), registered to {ENGINEER}

Console: sign in with the dev issuer's form (subject, role, tenant):
  customer admin  {base}/console   subject {CUSTOMER}, role customer_admin, tenant {TENANT}
  engineer        {saw.url}/console   subject {ENGINEER}, role engineer (on the local SAW: playback works here)
  manager         {base}/console   subject {MANAGER}, role manager
  auditor         {base}/console   subject {AUDITOR}, role auditor
  The engineer's browser needs the local SAW's certificate: import {saw.path('saw.p12')}
  (password {saw.p12_password}) and trust (or accept) {saw.path('server-ca.crt')}.

From a terminal (bash, curl, python3): ask for access, approve it, play the call back from the SAW:
# --- voicelog demo commands ---
export {env}
ENGINEER=$({voicelog} dev token --as {ENGINEER} --role engineer)
MANAGER=$({voicelog} dev token --as {MANAGER} --role manager)
ACCESS=$(curl -sS --fail-with-body -X POST {base}/access/requests -H "Authorization: Bearer $ENGINEER" \\
  -H 'content-type: application/json' -d {shlex.quote(ask)} \\
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
curl -sS --fail-with-body -X POST {base}/access/requests/$ACCESS/approve -H "Authorization: Bearer $MANAGER" \\
  -H 'content-type: application/json' -d '{{"duration_minutes": 60}}'
curl -sS --fail-with-body {saw.curl_tls()} -H "Authorization: Bearer $ENGINEER" \\
  {saw.url}/recordings/{world.request_id}/audio/caller.wav -o demo-caller.wav
curl -sS --fail-with-body {saw.curl_tls()} -H "Authorization: Bearer $ENGINEER" \\
  {saw.url}/recordings/{world.request_id}/events
# --- end ---

voicelog demo is running at {base}. Ctrl-C stops it.
"""


@contextlib.asynccontextmanager
async def _nginx(saw: LocalSaw, binary: str | None) -> AsyncIterator[bool]:
    """The local SAW's nginx as a child, stopped with the demo; False when nginx is not installed."""
    if binary is None:
        yield False
        return
    process = await asyncio.create_subprocess_exec(binary, *saw.nginx_args, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
    try:
        await _wait_listening(saw.port, process)
        yield True
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _wait_listening(port: int, process: asyncio.subprocess.Process) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        if process.returncode is not None:
            raise DemoError(f"nginx exited with {process.returncode}: is port {port} in use? (--saw-port)")
        try:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > deadline:
                raise DemoError(f"nginx did not listen on port {port}") from None
            await asyncio.sleep(0.05)
            continue
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return


async def run_demo(options: DemoOptions) -> None:
    """Serve, build the world, print the guide, and keep serving until SIGINT/SIGTERM."""
    from app import migrate
    from app.access.saw.settings import refuse_local_saw_beside_production
    from app.cli import build_server
    from app.context import context_of
    from app.main import create_app

    settings = demo_settings(options)
    _ports_free(options)
    refuse_local_saw_beside_production(settings.saw, production_issuer=settings.identity.production)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    await asyncio.to_thread(migrate.upgrade, settings.resolved_database_url)
    app = create_app(settings)
    ctx = context_of(app)  # the app's own dev issuer and admin token: loaded once, by its context's builder
    issuer, token = ctx.dev_issuer, ctx.admin_token
    if issuer is None or token is None:
        raise DemoError("the demo runs on the embedded defaults only (unset VOICELOG_DATABASE_URL and "
                        "VOICELOG_IDENTITY__*)")
    saw = write_local_saw(settings.data_dir / "local-saw", owner=ENGINEER, port=options.saw_port,
                          upstream_port=settings.port)
    server = build_server(settings, options.host, options.port, app)
    server.config.loop = "asyncio"
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # ours, below
    serving = asyncio.create_task(server.serve(), name="voicelog-demo-server")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not server.started:
            if serving.done():
                serving.result()
                raise DemoError(f"the service did not start on {options.host}:{options.port}")
            await asyncio.sleep(0.02)
        binary = nginx_binary() if options.start_nginx else None
        async with _nginx(saw, binary) as nginx_running:
            world = await _until(stop, build_world(settings, issuer, token, saw, nginx_running))
            if world is not None:
                print(guide(world, settings, binary), flush=True)  # noqa: T201 - the demo's output
                await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        server.should_exit = True
        await serving


def _ports_free(options: DemoOptions) -> None:
    """One clear line for a port in use, naming the option that moves it (before anything starts)."""
    for port, host, option in ((options.port, options.host, "--port / VOICELOG_PORT"),
                               (options.standin_port, "127.0.0.1", "--standin-port / VOICELOG_STANDIN_PORT"),
                               (options.saw_port, "127.0.0.1", "--saw-port")):
        if option == "--saw-port" and not options.start_nginx:
            continue
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise DemoError(f"port {port} on {host} is in use ({exc.strerror}); choose another with {option}")\
                    from None


async def _until(stop: asyncio.Event, work: Awaitable[DemoWorld]) -> DemoWorld | None:
    """`work`, unless a stop comes first (Ctrl-C while the world is being built)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    done, _pending = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


def demo(
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="Where the demo keeps everything (default VOICELOG_DATA_DIR, `.voicelog`).",
        file_okay=False)] = None,
    port: Annotated[int | None, typer.Option(help="voicelog's port (default VOICELOG_PORT, 8000).",
                                             min=1, max=65535)] = None,
    standin_port: Annotated[int | None, typer.Option(help="The stand-in upstream's port (default 8765).",
                                                     min=1, max=65535)] = None,
    saw_port: Annotated[int, typer.Option(help="The local SAW's nginx port.", min=1, max=65535)] = DEFAULT_SAW_PORT,
    nginx: Annotated[bool, typer.Option(help="Start the local SAW's nginx (when installed).")] = True,
) -> None:
    """Run voicelog on its embedded defaults with a recorded demo call, and print what to do next."""
    configure_cli_logging(os.environ.get("VOICELOG_LOG_LEVEL", "WARNING").upper())
    try:
        base = Settings()
    except ValueError as exc:
        typer.echo(f"error: invalid settings: {exc}", err=True)
        raise typer.Exit(2) from None
    options = DemoOptions(data_dir=data_dir or base.data_dir, port=port or base.port,
                          standin_port=standin_port or base.standin_port, saw_port=saw_port, start_nginx=nginx)
    try:
        asyncio.run(run_demo(options))
    except (DemoError, ValueError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    typer.run(demo)
