"""Console sessions live in the database: any replica serves a signed-in user, and the database alone can
neither replay a cookie nor read a token, a CSRF token, a sign-in secret or a flash.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
from playwright.async_api import expect
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.console.login_key import LoginKey
from app.console.models import ConsoleSessionRow
from app.console.sealing import csrf_token, open_state, row_key, seal_state
from app.console.sessions import PendingLogin, SessionStore, open_pending_login, seal_pending_login
from app.console.settings import ConsoleSettings
from app.db import create_engine, create_session_factory
from app.identity.settings import IdentitySettings
from tests.console.stack import chromium, shot, sign_in
from tests.fixtures.relay import RelayHandle, relay_settings, run_relay

COOKIE = "__Host-voicelog-console"
LOGIN_COOKIE = "__Host-voicelog-login"
ERASE_UNCONFIRMED = "Tick the box to confirm the erasure."


@dataclass
class SignedIn:
    cookie: str
    login_cookie: str
    callback: str  # path and query the issuer sent the browser back to: the one-time code and the state
    csrf: str


def set_cookie(response: httpx.Response, name: str) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        found = re.match(rf"{re.escape(name)}=([^;]*)", header)
        if found:
            return found.group(1)
    return None


def with_cookie(name: str, value: str) -> dict[str, str]:
    # Sent by hand: httpx's cookie jar keeps Secure cookies off plain http, as it should.
    return {"cookie": f"{name}={value}"}


async def sign_in_over_http(base: str, subject: str, *, roles: tuple[str, ...] = ("customer_admin",),
                            tenant: str = "demo-tenant") -> SignedIn:
    """The console's OIDC code+PKCE flow against the dev issuer, as a browser without JavaScript does it."""
    async with httpx.AsyncClient(base_url=base) as client:
        start = await client.get("/console/login", params={"next": "/console/customer"})
        assert start.status_code == 303, start.text
        login_cookie = set_cookie(start, LOGIN_COOKIE)
        assert login_cookie
        form = await client.get(start.headers["location"])
        transaction = re.search(r'name="transaction" value="([^"]+)"', form.text)
        assert transaction is not None, form.text
        issued = await client.post("/dev/oidc/authorize", data={
            "transaction": transaction.group(1), "subject": subject, "roles": list(roles), "tenant": tenant})
        assert issued.status_code == 303, issued.text
        callback = httpx.URL(issued.headers["location"]).raw_path.decode()
        done = await client.get(callback, headers=with_cookie(LOGIN_COOKIE, login_cookie))
        assert done.status_code == 200, done.text
        cookie = set_cookie(done, COOKIE)
        assert cookie
        home = await client.get("/console/customer", headers=with_cookie(COOKIE, cookie))
        csrf = re.search(r'name="csrf" value="([^"]+)"', home.text)
        assert csrf is not None, home.text
        return SignedIn(cookie, login_cookie, callback, csrf.group(1))


@pytest.fixture
async def replicas(tmp_path: Path, identity_settings: IdentitySettings, migrated_databases: dict[str, str]
                   ) -> AsyncIterator[tuple[RelayHandle, RelayHandle]]:
    """Two apps built by create_app on the same PostgreSQL database, as two pods behind a non-sticky ingress."""
    url = migrated_databases["postgresql"]
    async with run_relay(relay_settings(tmp_path / "a", url, identity=identity_settings)) as a, \
            run_relay(relay_settings(tmp_path / "b", url, identity=identity_settings)) as b:
        yield a, b


@pytest.fixture
async def replica(tmp_path: Path, identity_settings: IdentitySettings, app_db_url: str
                  ) -> AsyncIterator[RelayHandle]:
    async with run_relay(relay_settings(tmp_path, app_db_url, identity=identity_settings)) as handle:
        yield handle


@pytest.fixture
async def factory(app_db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(app_db_url)
    yield create_session_factory(engine)
    await engine.dispose()


@pytest.mark.slow
async def test_a_browser_signed_in_on_one_replica_is_signed_in_on_the_other(
    replicas: tuple[RelayHandle, RelayHandle],
) -> None:
    a, b = replicas
    subject = f"carol-{uuid4().hex[:6]}"
    async with chromium() as browser:
        # Cookies are per host, not per port: this browser sends A's cookie to B as it would to any pod.
        context, page = await sign_in(browser, a, subject, ["customer_admin"], tenant="demo-tenant")
        cookie = next(c["value"] for c in await context.cookies() if c["name"] == COOKIE)

        await page.goto(f"{b.http}/console/customer")
        await expect(page.get_by_role("heading", name="My resources")).to_be_visible()
        await expect(page.locator("form.who")).to_contain_text(subject)
        await shot(page, "20-replica-b-signed-in")

        csrf = await page.locator("form.who input[name=csrf]").input_value()
        posted = await context.request.post(f"{b.http}/console/customer/resources/none/consents/none/erase",
                                            form={"csrf": csrf}, max_redirects=0)
        assert posted.status == 303
        await page.goto(f"{a.http}/console")
        await expect(page.get_by_role("alert")).to_have_text(ERASE_UNCONFIRMED)
        await page.goto(f"{b.http}/console")
        await expect(page.get_by_role("heading", name=f"Welcome, {subject}")).to_be_visible()
        await expect(page.get_by_role("alert")).to_have_count(0)  # shown once, on A

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.get_by_text("You are signed out.")).to_be_visible()
        await page.goto(f"{a.http}/console/customer")
        await page.wait_for_url("**/dev/oidc/authorize?**")
        await context.close()
    async with httpx.AsyncClient() as client:  # the cookie itself, replayed to A after sign-out on B
        replayed = await client.get(f"{a.http}/console/customer", headers=with_cookie(COOKIE, cookie))
    assert replayed.status_code == 303
    assert replayed.headers["location"].startswith("/console/login")


async def test_a_sign_in_callback_is_used_once_even_on_another_replica(
    replicas: tuple[RelayHandle, RelayHandle],
) -> None:
    a, b = replicas
    signed = await sign_in_over_http(a.http, f"dan-{uuid4().hex[:6]}")
    async with httpx.AsyncClient() as client:
        for replica in (b, a):
            replay = await client.get(f"{replica.http}{signed.callback}",
                                      headers=with_cookie(LOGIN_COOKIE, signed.login_cookie))
            assert replay.status_code == 400
            assert set_cookie(replay, COOKIE) is None
        on_b = await client.get(f"{b.http}/console/customer", headers=with_cookie(COOKIE, signed.cookie))
    assert on_b.status_code == 200
    assert f'name="csrf" value="{signed.csrf}"' in on_b.text  # derived from the id: the same on every replica


def needles(secret: str) -> dict[str, bytes]:
    """The forms a leak could take: raw, hex, base64 (standard and URL-safe) at each alignment, and the
    bytes a base64url token stands for."""
    raw = secret.encode()
    out = {"raw": raw, "hex": raw.hex().encode()}
    for shift in range(3):
        for name, encode in (("b64", base64.b64encode), ("b64url", base64.urlsafe_b64encode)):
            encoded = encode(b"\0" * shift + raw)
            out[f"{name}+{shift}"] = encoded[4 if shift else 0:-4]
    if re.fullmatch(r"[A-Za-z0-9_-]{40,}", secret):
        out["decoded"] = base64.urlsafe_b64decode(secret + "=" * (-len(secret) % 4))
    return out


async def table_bytes(url: str) -> bytes:
    """Every value of every console_sessions row; for SQLite, the database and WAL files whole."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM console_sessions"))).all()
    finally:
        await engine.dispose()
    dump = b"|".join(v if isinstance(v, bytes) else str(v).encode() for row in rows for v in row)
    if url.startswith("sqlite"):
        path = Path(url.removeprefix("sqlite+aiosqlite:///"))
        dump += b"".join(p.read_bytes() for p in (path, path.with_name(path.name + "-wal")) if p.exists())
    return dump


async def test_the_database_holds_no_cookie_token_csrf_sign_in_secret_or_flash(
    replica: RelayHandle, app_db_url: str,
) -> None:
    signed = await sign_in_over_http(replica.http, f"erin-{uuid4().hex[:6]}")
    async with httpx.AsyncClient(base_url=replica.http) as client:
        flashed = await client.post("/console/customer/resources/none/consents/none/erase",
                                    data={"csrf": signed.csrf}, headers=with_cookie(COOKIE, signed.cookie))
        assert flashed.status_code == 303  # the flash waits, sealed, for the next page
        pending = await client.get("/console/login")  # a sign-in left half-way: state, nonce, verifier stored
    pending_cookie = set_cookie(pending, LOGIN_COOKIE)
    assert pending_cookie
    query = httpx.URL(pending.headers["location"]).params

    server_key = await LoginKey(create_session_factory(create_engine(app_db_url))).get()
    pending_opened = open_pending_login(pending_cookie, server_key)  # only a replica can open it
    assert pending_opened is not None
    login_id, login = pending_opened
    async with create_session_factory(create_engine(app_db_url))() as db:
        row = await db.get(ConsoleSessionRow, row_key(signed.cookie))
        assert await db.get(ConsoleSessionRow, row_key(login_id)) is None  # a sign-in in progress keeps no row
    assert row is not None
    opened = open_state(signed.cookie, "session", row.sealed)
    assert opened is not None
    token = re.search(rb'"token":"([^"]+)"', opened)
    assert token is not None
    assert ERASE_UNCONFIRMED.encode() in opened
    assert (login.state, login.nonce) == (query["state"], query["nonce"])

    secrets = {"session cookie": signed.cookie, "access token": token.group(1).decode(), "csrf token": signed.csrf,
               "login cookie": pending_cookie, "state": query["state"], "nonce": query["nonce"],
               "pkce verifier": login.code_verifier, "flash": ERASE_UNCONFIRMED}
    dump = await table_bytes(app_db_url)
    assert row_key(signed.cookie) in dump  # the dump does hold the rows
    leaks = [f"{name}/{form}" for name, secret in secrets.items() for form, needle in needles(secret).items()
             if needle in dump]
    assert leaks == []


async def test_an_expired_session_is_refused_and_its_row_deleted(replica: RelayHandle, app_db_url: str) -> None:
    signed = await sign_in_over_http(replica.http, f"fay-{uuid4().hex[:6]}")
    factory = create_session_factory(create_engine(app_db_url))
    async with factory() as db:
        await db.execute(update(ConsoleSessionRow).where(ConsoleSessionRow.id_sha256 == row_key(signed.cookie))
                         .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
        await db.commit()
    async with httpx.AsyncClient(base_url=replica.http) as client:
        page = await client.get("/console/customer", headers=with_cookie(COOKIE, signed.cookie))
    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/login")
    async with factory() as db:
        assert await db.get(ConsoleSessionRow, row_key(signed.cookie)) is None


def store(factory: async_sessionmaker[AsyncSession], *, capacity: int = 10_000) -> SessionStore:
    """A store of its own kind, so rows of other tests in the same database never count."""
    return SessionStore(session_factory=factory, kind=f"t-{uuid4().hex[:12]}", idle=timedelta(minutes=30),
                        absolute=timedelta(hours=8), capacity=capacity)


async def rows_of(factory: async_sessionmaker[AsyncSession], kind: str) -> int:
    async with factory() as db:
        return int(await db.scalar(select(func.count()).select_from(ConsoleSessionRow)
                                   .where(ConsoleSessionRow.kind == kind)) or 0)


async def test_idle_and_absolute_lifetimes_end_a_session_and_delete_its_row(
    factory: async_sessionmaker[AsyncSession],
) -> None:
    sessions, t0 = store(factory), datetime.now(UTC)
    idle = await sessions.create(t0, token="t")
    for minutes in (20, 45):  # each request slides the idle limit
        seen = await sessions.get(idle.id, t0 + timedelta(minutes=minutes))
        assert seen is not None
        await sessions.save(seen)
    assert await sessions.get(idle.id, t0 + timedelta(minutes=45 + 31)) is None
    assert await rows_of(factory, sessions.kind) == 0

    busy = await sessions.create(t0, token="t")
    at = t0
    while at < t0 + timedelta(hours=8):  # never idle, still ends after 8 hours
        at += timedelta(minutes=20)
        seen = await sessions.get(busy.id, at)
        if seen is None:
            break
        await sessions.save(seen)
    assert at - t0 > timedelta(hours=8) - timedelta(minutes=20)
    assert await sessions.get(busy.id, t0 + timedelta(hours=8, minutes=1)) is None
    assert await rows_of(factory, sessions.kind) == 0


async def test_each_new_session_deletes_expired_rows_and_keeps_at_most_capacity(
    factory: async_sessionmaker[AsyncSession],
) -> None:
    sessions, t0 = store(factory, capacity=10), datetime.now(UTC)
    for i in range(3):
        await sessions.create(t0 + timedelta(seconds=i))
    await sessions.create(t0 + timedelta(hours=9))
    assert await rows_of(factory, sessions.kind) == 1  # the three expired ones are gone without being asked for

    later = t0 + timedelta(hours=10)
    made = [await sessions.create(later + timedelta(seconds=i)) for i in range(15)]
    assert await rows_of(factory, sessions.kind) == 10
    assert await sessions.get(made[0].id, later + timedelta(seconds=20)) is None  # the oldest went first
    assert await sessions.get(made[-1].id, later + timedelta(seconds=20)) is not None


async def test_a_sign_in_that_came_back_is_used_once_across_replicas(
    factory: async_sessionmaker[AsyncSession],
) -> None:
    on_a, on_b, now = store(factory), store(factory), datetime.now(UTC)
    on_b.kind = on_a.kind  # two replicas' stores of the same kind
    until = now + timedelta(minutes=11)
    assert await on_a.use_once("login-1", now, until=until) is True
    assert await on_b.use_once("login-1", now, until=until) is False  # the second replica to try loses
    assert await on_b.use_once("login-2", now, until=until) is True
    later = now + timedelta(minutes=12)  # past the markers' time: they expire and go
    assert await on_a.use_once("login-3", later, until=later + timedelta(minutes=11)) is True
    assert await rows_of(factory, on_a.kind) == 1


async def test_a_flood_of_anonymous_sign_ins_writes_nothing_and_pushes_out_no_one(
    tmp_path: Path, identity_settings: IdentitySettings, app_db_url: str,
) -> None:
    """Sign-ins that never come back cost no row, so 50 of them past `max_sessions` (10) leave a sign-in
    begun before them intact."""
    settings = relay_settings(tmp_path, app_db_url, identity=identity_settings,
                              console=ConsoleSettings(max_sessions=10))
    async with run_relay(settings) as replica, httpx.AsyncClient(base_url=replica.http) as client:
        before = await all_rows(app_db_url)
        start = await client.get("/console/login", params={"next": "/console/customer"})
        login_cookie = set_cookie(start, LOGIN_COOKIE)
        assert login_cookie
        for _ in range(50):
            assert (await client.get("/console/login")).status_code == 303
        assert await all_rows(app_db_url) == before
        form = await client.get(start.headers["location"])
        transaction = re.search(r'name="transaction" value="([^"]+)"', form.text)
        assert transaction is not None
        issued = await client.post("/dev/oidc/authorize", data={
            "transaction": transaction.group(1), "subject": f"gus-{uuid4().hex[:6]}", "roles": ["customer_admin"],
            "tenant": "demo-tenant"})
        done = await client.get(httpx.URL(issued.headers["location"]).raw_path.decode(),
                                headers=with_cookie(LOGIN_COOKIE, login_cookie))
    assert done.status_code == 200, done.text
    assert set_cookie(done, COOKIE)


async def all_rows(url: str) -> int:
    """Sessions and markers (not the replicas' login key, made once by the first sign-in)."""
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as db:
            return int((await db.execute(select(func.count()).select_from(ConsoleSessionRow)
                                         .where(ConsoleSessionRow.kind != "login-key"))).scalar_one())
    finally:
        await engine.dispose()


async def test_a_flash_set_in_one_request_is_shown_once_in_the_next(factory: async_sessionmaker[AsyncSession]) -> None:
    sessions, now = store(factory), datetime.now(UTC)
    made = await sessions.create(now, token="t")
    posted = await sessions.get(made.id, now)
    assert posted is not None
    posted.flash("ok", "Access ended.")
    await sessions.save(posted)
    shown = await sessions.get(made.id, now)
    assert shown is not None
    assert shown.take_flashes() == [("ok", "Access ended.")]
    await sessions.save(shown)
    again = await sessions.get(made.id, now)
    assert again is not None
    assert again.flashes == []


def test_a_sealed_row_opens_only_under_its_own_id_and_kind() -> None:
    one, other = "a" * 43, "b" * 43
    sealed = seal_state(one, "session", b'{"token":"x"}')
    assert open_state(one, "session", sealed) == b'{"token":"x"}'
    assert open_state(other, "session", sealed) is None  # copied under another key
    assert open_state(one, "login", sealed) is None  # a pending sign-in is not a session
    flipped = bytearray(sealed)
    flipped[-1] ^= 1
    assert open_state(one, "session", bytes(flipped)) is None
    assert seal_state(one, "session", b"x") != seal_state(one, "session", b"x")  # a fresh nonce per save


def test_the_csrf_token_is_bound_to_the_session_id() -> None:
    one, other = "a" * 43, "b" * 43
    assert csrf_token(one) == csrf_token(one)
    assert csrf_token(one) != csrf_token(other)
    assert one not in csrf_token(one)


async def test_a_page_is_still_answered_when_saving_its_session_fails(
    replica: RelayHandle, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The save happens as the answer starts; a database blip then costs the seen time, not a 500."""
    signed = await sign_in_over_http(replica.http, f"gus-{uuid4().hex[:6]}")

    async def unreachable(self: SessionStore, *_args: object, **_kwargs: object) -> None:
        raise ConnectionRefusedError("database down")

    monkeypatch.setattr(SessionStore, "save", unreachable)
    async with httpx.AsyncClient(base_url=replica.http) as client:
        page = await client.get("/console/customer", headers=with_cookie(COOKIE, signed.cookie))
    assert page.status_code == 200
    assert "gus-" in page.text


async def test_a_forged_or_altered_login_cookie_is_a_clear_400(replica: RelayHandle) -> None:
    async with httpx.AsyncClient(base_url=replica.http) as client:
        start = await client.get("/console/login")
        genuine = set_cookie(start, LOGIN_COOKIE)
        assert genuine
        state = httpx.URL(start.headers["location"]).params["state"]
        login_id, _, sealed = genuine.partition(".")
        flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
        forged = ["", "no-dot", f"{login_id}.!!not-base64!!", f"{login_id}.{flipped}", f"other{login_id}.{sealed}",
                  f"{login_id}.{sealed}" + "A" * 4000]
        for value in forged:
            answer = await client.get("/console/callback", params={"code": "c", "state": state},
                                      headers=with_cookie(LOGIN_COOKIE, value))
            assert answer.status_code == 400, value[:40]
            assert "did not start here" in answer.text
        for presented in ("x" * 43, "ünïcode-state"):
            wrong_state = await client.get("/console/callback", params={"code": "c", "state": presented},
                                           headers=with_cookie(LOGIN_COOKIE, genuine))
            assert wrong_state.status_code == 400


async def test_a_login_cookie_no_replica_minted_is_refused_before_the_issuer_is_asked(
    replica: RelayHandle, app_db_url: str,
) -> None:
    """Someone who knows the cookie format but not the replicas' key seals their own sign-in, with a state
    of their choosing and the right redirect URI: a 400, no marker written, no call to the token endpoint."""
    now = datetime.now(UTC)
    forged = seal_pending_login(PendingLogin(state="s" * 43, code_verifier="v" * 86, nonce="n" * 32,
                                             redirect_uri=f"{replica.http}/console/callback", next_path="/console",
                                             created=now), server_key=bytes(32))
    before = await all_rows(app_db_url)
    async with httpx.AsyncClient(base_url=replica.http) as client:
        answer = await client.get("/console/callback", params={"code": "c", "state": "s" * 43},
                                  headers=with_cookie(LOGIN_COOKIE, forged))
        long_next = await client.get("/console/login", params={"next": "/console/customer" + "\u200b" * 500})
    assert answer.status_code == 400
    assert "did not start here" in answer.text
    assert await all_rows(app_db_url) == before  # no marker: it never got that far
    cookie = set_cookie(long_next, LOGIN_COOKIE)  # sealed small enough for any browser, whatever `next` is
    assert cookie is not None
    assert len(cookie) <= 3072


async def test_every_replica_opens_the_login_cookies_of_the_others(migrated_databases: dict[str, str]) -> None:
    """Replicas starting together race to make the login key; all of them end up with the same one, so a
    callback may land on any replica behind the public URL."""
    url = migrated_databases["postgresql"]
    engines = [create_engine(url) for _ in range(4)]
    try:
        async with engines[0].begin() as conn:  # as on a fresh database: nobody has made the key yet
            await conn.execute(delete(ConsoleSessionRow).where(ConsoleSessionRow.kind == "login-key"))
        keys = await asyncio.gather(*(LoginKey(create_session_factory(e)).get() for e in engines))
    finally:
        for engine in engines:
            await engine.dispose()
    assert len(set(keys)) == 1
    assert len(keys[0]) == 32
    login = PendingLogin(state="s" * 43, code_verifier="v" * 86, nonce="n" * 32,
                         redirect_uri="https://voicelog.example/console/callback", next_path="/console",
                         created=datetime.now(UTC))
    opened = open_pending_login(seal_pending_login(login, keys[0]), keys[3])
    assert opened is not None
    assert opened[1] == login
