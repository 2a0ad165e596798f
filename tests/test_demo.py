"""`voicelog demo` as a new user runs it: from a fresh data dir it ends with a recorded call, and what it prints
is enough to reach playback. The printed shell commands are run as printed (request, approve, read the audio
through the local SAW's real nginx); the engineer's console URL is followed in real Chromium holding the local
SAW's PKCS#12, signing in through the dev issuer behind nginx and playing the call (no injected headers, no
cookie tricks). Ctrl-C stops the service and its nginx.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from playwright.async_api import expect

from app.identity.dev_issuer import DevIssuer
from app.identity.principal import Role
from tests.console.stack import chromium
from tests.fixtures.saw import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("demo")]  # one demo per module, on one worker

REPO = Path(__file__).resolve().parents[1]
READY = "Ctrl-C stops it."
START_GUARD_S = 300  # a hang guard, not a timing assertion: the demo prints its guide or the test fails


@dataclass
class Demo:
    process: subprocess.Popen[str]
    output: str
    data_dir: Path
    port: int
    saw_port: int
    workdir: Path

    @property
    def request_id(self) -> str:
        found = re.search(r"recorded\s+request ID ([0-9a-f]{32})", self.output)
        assert found, self.output
        return found.group(1)

    @property
    def commands(self) -> str:
        found = re.search(r"^# --- voicelog demo commands ---\n.*?^# --- end ---$", self.output, re.S | re.M)
        assert found, self.output
        return found.group(0)

    def console_url(self, role: str) -> str:
        found = re.search(rf"^\s+{role}\s+(\S+/console)\s", self.output, re.M)
        assert found, self.output
        return found.group(1)

    def token(self, subject: str, role: Role, tenant: str | None = None) -> str:
        """What `voicelog dev token` prints, from the demo's own dev key (its data dir, its port)."""
        issuer = DevIssuer.load_or_create(self.data_dir / "dev-issuer", audience="voicelog-dev",
                                          issuer=f"http://127.0.0.1:{self.port}/dev/oidc")
        return issuer.mint(subject, [role], tenant, timedelta(minutes=30))


def _read_lines(stream: object, lines: queue.Queue[str | None]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)
    lines.put(None)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("demo")
    data_dir = workdir / "fresh-data-dir"
    port, standin_port, saw_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOICELOG_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "app.demo", "--data-dir", str(data_dir), "--port", str(port),
         "--standin-port", str(standin_port), "--saw-port", str(saw_port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_read_lines, args=(process.stdout, lines), daemon=True).start()
    output: list[str] = []
    try:
        while True:
            try:
                line = lines.get(timeout=START_GUARD_S)
            except queue.Empty:
                pytest.fail(f"the demo printed no guide:\n{''.join(output)}")
            if line is None:
                assert process.stderr is not None
                pytest.fail(f"the demo exited {process.wait()}:\n{''.join(output)}\n{process.stderr.read()}")
            output.append(line)
            if READY in line:
                break
        yield Demo(process, "".join(output), data_dir, port, saw_port, workdir)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_demo_records_a_call_and_prints_where_each_role_goes(demo: Demo) -> None:
    assert "tenant demo-tenant" in demo.output
    assert demo.console_url("engineer") == f"https://127.0.0.1:{demo.saw_port}/console"
    for role in ("customer admin", "manager", "auditor"):
        assert demo.console_url(role) == f"http://127.0.0.1:{demo.port}/console"
    # The customer's admin finds the recorded call in their own list, as the demo says.
    token = demo.token("demo-customer", Role.CUSTOMER_ADMIN, tenant="demo-tenant")
    rows = httpx.get(f"http://127.0.0.1:{demo.port}/customer/resources/demo/recordings",
                     headers={"Authorization": f"Bearer {token}"}).json()
    assert [(r["request_id"], r["state"]) for r in rows] == [(demo.request_id, "complete")]


async def test_the_engineer_signs_in_through_the_local_saw_and_plays_the_call(demo: Demo) -> None:
    saw = demo.data_dir / "local-saw"
    origin = f"https://127.0.0.1:{demo.saw_port}"
    async with chromium() as browser:
        context = await browser.new_context(
            base_url=origin, ignore_https_errors=True,  # the local server CA is not in this profile's trust
            client_certificates=[{"origin": origin, "pfxPath": str(saw / "saw.p12"),
                                  "passphrase": (saw / "saw.p12.password").read_text().strip()}])
        page = await context.new_page()
        await page.goto(demo.console_url("engineer"))
        await page.get_by_role("link", name="Sign in").click()
        await page.wait_for_url(f"{origin}/dev/oidc/authorize?**")
        assert f"redirect_uri=https%3A%2F%2F127.0.0.1%3A{demo.saw_port}%2Fconsole%2Fcallback" in page.url
        await page.get_by_label("Subject").fill("demo-engineer")
        await page.locator("#role-engineer").check()
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_url(f"{origin}/console")
        await page.get_by_role("heading", name="Welcome, demo-engineer").wait_for()

        await page.goto("/console/engineer")
        await page.get_by_label("Request IDs").fill(demo.request_id)
        ref = re.search(r"ticket\s+(DEMO-\S+)", demo.output)
        assert ref
        await page.get_by_label("Justification").fill(f"{ref.group(1)}: the caller was cut off; I need the turn.")
        await page.get_by_role("button", name="Ask my manager").click()
        await expect(page.get_by_role("status").filter(has_text="sent to your team's managers")).to_be_visible()

        # The manager approves through the API (their own token); the engineer's page then links the call.
        manager = {"Authorization": f"Bearer {demo.token('demo-manager', Role.MANAGER)}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{demo.port}") as api:
            queue_ = (await api.get("/access/queue", headers=manager)).json()
            mine = [r["id"] for r in queue_ if demo.request_id in r["request_ids"]]
            assert len(mine) == 1, queue_
            approved = await api.post(f"/access/requests/{mine[0]}/approve", headers=manager,
                                      json={"duration_minutes": 30})
            assert approved.status_code == 200, approved.text
        await page.reload()
        await page.get_by_role("link", name=demo.request_id).click()
        await page.wait_for_url(f"{origin}/console/recordings/{demo.request_id}")
        for track in ("caller", "service"):
            await expect(page.locator(f'.track[data-track="{track}"]')).to_have_attribute("data-loaded", "true")
        duration = await page.locator("#audio-caller").evaluate(
            "a => new Promise(r => a.readyState >= 1 ? r(a.duration)"
            " : a.addEventListener('loadedmetadata', () => r(a.duration)))")
        assert duration > 1.0
        await expect(page.locator("#events")).to_contain_text("response.done")
        await context.close()


def test_the_printed_commands_ask_approve_and_play_the_call_back(demo: Demo) -> None:
    script = demo.workdir / "follow.sh"
    script.write_text(demo.commands)
    bash = shutil.which("bash")
    assert bash is not None
    done = subprocess.run([bash, "-euo", "pipefail", str(script)], cwd=demo.workdir, capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items() if not k.startswith("VOICELOG_")},
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    wav = (demo.workdir / "demo-caller.wav").read_bytes()
    assert (wav[:4], wav[8:12]) == (b"RIFF", b"WAVE")
    assert len(wav) > 44 + 24000  # the caller's 1.6 s at 24 kHz pcm16, not a header alone
    assert "response.done" in done.stdout  # the events call printed the timeline


def test_ctrl_c_stops_the_demo_and_its_nginx(demo: Demo) -> None:
    demo.process.send_signal(signal.SIGINT)
    assert demo.process.wait(60) == 0
    for port in (demo.port, demo.saw_port):
        with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
            probe.connect(("127.0.0.1", port))
