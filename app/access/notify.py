"""Team webhooks for access events: signed (HMAC-SHA256), retried, never in the way of a decision.

`Notifier.emit` only puts the event on a bounded in-memory queue; a background task delivers it. A full
queue or an endpoint that keeps failing loses the notification (counted and logged), never the decision.
Payloads carry ids, roles, times and states; never recording content, and no justification text.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.ext.asyncio import AsyncSession

from app.access.endings import take_ended_grants
from app.access.models import AccessRequest
from app.access.settings import TeamWebhook
from app.identity.staff.service import get_team
from app.logs import get_logger
from app.transaction import after_commit

log = get_logger("voicelog.notify")


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """`sha256=` + hex HMAC over `timestamp.body`, so a captured request cannot be replayed later."""
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class Notifier:
    def __init__(self, webhooks: list[TeamWebhook], registry: CollectorRegistry, *, queue_size: int = 1000,
                 attempts: int = 4, timeout_s: float = 5.0, backoff_s: float = 0.5) -> None:
        self._hooks = {w.team: w for w in webhooks}
        self._queue: asyncio.Queue[tuple[TeamWebhook, bytes]] = asyncio.Queue(maxsize=queue_size)
        self._attempts, self._timeout_s, self._backoff_s = attempts, timeout_s, backoff_s
        self._task: asyncio.Task[None] | None = None
        self.sent = Counter("voicelog_notifications_sent", "Access notifications delivered.", registry=registry)
        self.failed = Counter("voicelog_notifications_failed", "Access notifications given up, by reason.",
                              ["reason"], registry=registry)

    def emit(self, team: str | None, event: str, payload: dict[str, Any]) -> None:
        hook = self._hooks.get(team or "")
        if hook is None:
            return
        body = json.dumps({"event": event, **payload}, separators=(",", ":"), sort_keys=True).encode()
        try:
            self._queue.put_nowait((hook, body))
        except asyncio.QueueFull:
            self.failed.labels("queue_full").inc()
            log.warning("notify.dropped", team=team, notification=event)

    def start(self) -> None:
        # The client is made here, during start-up, not at the task's first step: its TLS context loads the CA
        # bundle, which holds the event loop 0.15-0.2 s (measured), and by then the server may be taking calls.
        client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
        self._task = asyncio.create_task(self._run(client), name="access-notifier")

    async def stop(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, client: httpx.AsyncClient) -> None:
        async with client:
            while True:
                hook, body = await self._queue.get()
                try:
                    await self._deliver(client, hook, body)
                finally:
                    self._queue.task_done()

    async def _deliver(self, client: httpx.AsyncClient, hook: TeamWebhook, body: bytes) -> None:
        secret = hook.secret.get_secret_value().encode()
        for attempt in range(self._attempts):
            timestamp = str(int(time.time()))
            headers = {"Content-Type": "application/json", "X-Voicelog-Timestamp": timestamp,
                       "X-Voicelog-Signature": signature(secret, timestamp, body)}
            try:
                response = await client.post(hook.url, content=body, headers=headers)
                if response.status_code < 300:
                    self.sent.inc()
                    return
                reason = f"http_{response.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt + 1 < self._attempts:
                await asyncio.sleep(self._backoff_s * 2**attempt)
        self.failed.labels("gave_up").inc()
        log.warning("notify.failed", team=hook.team, reason=reason)


async def notify_team(*, session: AsyncSession, notifier: Notifier, row: AccessRequest, event: str) -> None:
    """Tell the requester's team of an access event once `session`'s transaction has committed (a rolled-back
    decision is never announced); ids, times and states only, as they are now."""
    team = await get_team(session=session, team_id=row.requester_team_id) if row.requester_team_id else None
    name = team.name if team else None
    payload = {"access_request": row.id, "ticket_id": row.ticket_id, "requester": row.requester, "team": name,
               "state": row.state, "expires_at": row.expires_at.isoformat() if row.expires_at else None}
    after_commit(session, lambda: notifier.emit(name, event, payload))


async def notify_ended_grants(*, session: AsyncSession, notifier: Notifier) -> None:
    """Tell the team of every grant the staff or ticket change in this transaction ended, as for a revocation
    (the customer sees it in the access log as `revoked`)."""
    for row in take_ended_grants(session):
        await notify_team(session=session, notifier=notifier, row=row, event="access.revoked")
