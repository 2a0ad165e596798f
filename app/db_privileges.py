"""Least privilege on PostgreSQL (C6): what the service role may do on each table, granting it, checking it.

Two roles: migrations run as the OWNER role, which owns every table; the service connects as a SERVICE role
that owns nothing. Only an owner (or a member of the owner role, or a superuser) can `ALTER TABLE ... DISABLE
TRIGGER`, so the service role cannot switch off the append-only triggers of the audit tables, and its
privileges there are SELECT and INSERT plus the two exceptions named in SERVICE_GRANTS.

Every table has an explicit decision in SERVICE_GRANTS; granting refuses a database holding a table without
one, so a new table is a decision, never a default. There is deliberately no ALTER DEFAULT PRIVILEGES.

Beyond the tables: the service role may not CREATE in the schema (granting revokes it from the role and from
PUBLIC, which holds it in databases made before PostgreSQL 15), and it loses TEMPORARY on the database where
the granting role can take it (PUBLIC holds TEMPORARY by default; that stays the database owner's decision,
and the audit trigger functions do not depend on it: migration 0011 fixes their search_path).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from app.logs import get_logger

log = get_logger("voicelog.database")

ROLE_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
READ_WRITE: Final = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
GRANTABLE: Final = READ_WRITE  # never TRUNCATE, REFERENCES or TRIGGER
AUDIT_TABLES: Final = ("audit_entries", "audit_inbox", "audit_chain_head", "audit_checkpoints")
REPORTED: Final = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


@dataclass(frozen=True)
class TableGrant:
    """The service role's privileges on one table; `columns` are column-level grants (privilege -> columns)."""

    privileges: frozenset[str]
    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def expected(self) -> frozenset[str]:
        """As `inspect_role` reports them: column grants read `UPDATE(id)`."""
        return self.privileges | {f"{p}({','.join(cols)})" for p, cols in self.columns.items()}


def _grant(*privileges: str, columns: Mapping[str, tuple[str, ...]] | None = None) -> TableGrant:
    return TableGrant(frozenset(privileges), dict(columns or {}))


_CRUD: Final = _grant(*sorted(READ_WRITE))

SERVICE_GRANTS: Final[Mapping[str, TableGrant]] = {
    # --- the audit trail: append and read, nothing that changes the past -------------------------------
    "audit_entries": _grant("SELECT", "INSERT"),
    # DELETE: the sequencer removes the rows it has chained (integrate_locked); the trigger
    # audit_inbox_delete_chained refuses to delete a row no entry carries the inbox_id of.
    "audit_inbox": _grant("SELECT", "INSERT", "DELETE"),
    # UPDATE on `id` alone: the chain lock is `SELECT ... FOR UPDATE` on the head row, which PostgreSQL allows
    # only with UPDATE on some column. `id` is pinned to 1 by a CHECK and audit_chain_head_forward refuses
    # any real change, so it moves nothing; the head is moved by audit_entries_extend_head, which runs as the
    # owner (SECURITY DEFINER, migration 0009).
    "audit_chain_head": _grant("SELECT", columns={"UPDATE": ("id",)}),
    "audit_checkpoints": _grant("SELECT", "INSERT"),
    # --- Alembic's bookkeeping: the service reads the revision, only migrations write it ----------------
    "alembic_version": _grant("SELECT"),
    # --- everything else: ordinary rows the services create, change and delete ------------------------
    "access_request_items": _CRUD,
    "access_requests": _CRUD,
    "console_sessions": _CRUD,
    "consents": _CRUD,
    "recordings": _CRUD,
    "resources": _CRUD,
    "retention_buckets": _CRUD,
    "retention_job_runs": _CRUD,
    "retention_reports": _CRUD,
    "saws": _CRUD,
    "staff": _CRUD,
    "staff_roles": _CRUD,
    "team_managers": _CRUD,
    "teams": _CRUD,
    "ticket_assignments": _CRUD,
    "tickets": _CRUD,
}


class PrivilegeError(Exception):
    """The grants cannot be made as asked (bad role name, unsafe role, a table without a decision)."""


def validate_role_name(name: str) -> str:
    """A PostgreSQL role name we are willing to put into GRANT: lower-case letters, digits, underscores."""
    if not ROLE_NAME.fullmatch(name) or name.startswith("pg_"):
        raise PrivilegeError(f"invalid service role name {name!r}: use [a-z_][a-z0-9_]* (at most 63, not pg_*)")
    return name


def _quote(conn: AsyncConnection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


@dataclass(frozen=True)
class GrantSummary:
    role: str
    tables: tuple[str, ...]
    sequences: tuple[str, ...]
    public_create_revoked: bool = False  # PUBLIC held CREATE on the schema and granting took it
    can_create_in_schema: bool = False  # the role may still CREATE in the schema (the owner must revoke it)
    has_temp: bool = False  # the role may still create TEMP tables (through PUBLIC, unless revoked there)

    def notes(self) -> tuple[str, ...]:
        """What an operator should know beyond the table grants, one line each."""
        out = []
        if self.public_create_revoked:
            out.append("revoked CREATE on the schema from PUBLIC")
        if self.can_create_in_schema:
            out.append(f"{self.role} may still CREATE in the schema: its owner must revoke CREATE from PUBLIC")
        if self.has_temp:
            out.append(f"{self.role} may create TEMP tables (TEMPORARY through PUBLIC): harmless to the audit "
                       "triggers; REVOKE TEMPORARY ON DATABASE ... FROM PUBLIC to close it")
        return tuple(out)


_TABLES = text(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY c.relname"
)
# Sequences with the table that owns them (serial / identity columns); a free-standing one has no table.
_SEQUENCES = text(
    "SELECT s.relname, t.relname FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace "
    "LEFT JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid "
    "  AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') "
    "LEFT JOIN pg_class t ON t.oid = d.refobjid "
    "WHERE n.nspname = current_schema() AND s.relkind = 'S' ORDER BY s.relname"
)
_ROLE = text("SELECT oid, rolsuper FROM pg_roles WHERE rolname = :role")
# PUBLIC as a grantee is spelled 'public' in has_*_privilege.
_PUBLIC_CREATE = text("SELECT has_schema_privilege('public', current_schema(), 'CREATE')")
_MAY_REVOKE_CREATE = text("SELECT has_schema_privilege(current_user, current_schema(), 'CREATE WITH GRANT OPTION')")
_MAY_REVOKE_TEMP = text(
    "SELECT has_database_privilege(current_user, current_database(), 'TEMPORARY WITH GRANT OPTION')")
_SCHEMA_CREATE = text("SELECT has_schema_privilege(CAST(:role AS name), current_schema(), 'CREATE')")
_DATABASE_TEMP = text("SELECT has_database_privilege(CAST(:role AS name), current_database(), 'TEMPORARY')")
_OWNED = text(
    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = current_schema() AND (c.relowner = :oid OR pg_has_role(:oid, c.relowner, 'MEMBER'))"
)


async def grant_service_privileges(conn: AsyncConnection, role: str) -> GrantSummary:
    """Give `role` exactly SERVICE_GRANTS on the tables of the current schema (run as the owner, idempotent).

    Each table's privileges are revoked and granted again in the caller's transaction, so other sessions
    never see a table without them. Refuses a role that is a superuser or owns (or may act as the owner of)
    any table, and a schema holding a table or sequence without a decision.
    """
    validate_role_name(role)
    if conn.dialect.name != "postgresql":
        raise PrivilegeError("database roles are a PostgreSQL matter; SQLite has none")
    found = (await conn.execute(_ROLE, {"role": role})).one_or_none()
    if found is None:
        raise PrivilegeError(f"role {role!r} does not exist: create it first (docs/DEPLOY.md, 'Database roles')")
    if found.rolsuper:
        raise PrivilegeError(f"role {role!r} is a superuser: the service role must be an ordinary role")
    if (await conn.execute(_OWNED, {"oid": found.oid})).scalar_one():
        raise PrivilegeError(f"role {role!r} owns tables here or is a member of their owner: "
                             "the service role must own nothing (migrate as the owner role)")
    tables = list((await conn.execute(_TABLES)).scalars())
    sequences = [(str(s), t) for s, t in (await conn.execute(_SEQUENCES)).all()]
    undeclared = sorted({*(t for t in tables if t not in SERVICE_GRANTS),
                         *(f"{s} (sequence)" for s, t in sequences if t not in SERVICE_GRANTS)})
    if undeclared:
        raise PrivilegeError(f"no privilege decision for: {', '.join(undeclared)} (add it to SERVICE_GRANTS)")
    grantee = _quote(conn, role)
    schema = _quote(conn, str((await conn.execute(text("SELECT current_schema()"))).scalar_one()))
    await conn.execute(text(f"GRANT USAGE ON SCHEMA {schema} TO {grantee}"))
    await conn.execute(text(f"REVOKE CREATE ON SCHEMA {schema} FROM {grantee}"))
    public_create_revoked = False
    if (await conn.execute(_PUBLIC_CREATE)).scalar_one():
        # Databases made before PostgreSQL 15 let everyone CREATE in schema public: the service role too.
        if (await conn.execute(_MAY_REVOKE_CREATE)).scalar_one():
            await conn.execute(text(f"REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC"))
            public_create_revoked = True
            log.warning("database.schema.public_create_revoked", schema=schema)
        else:
            log.warning("database.schema.public_create_kept", schema=schema,
                        reason="the granting role may not revoke it: the schema's owner must")
    if (await conn.execute(_MAY_REVOKE_TEMP)).scalar_one():
        database = _quote(conn, str((await conn.execute(text("SELECT current_database()"))).scalar_one()))
        await conn.execute(text(f"REVOKE TEMPORARY ON DATABASE {database} FROM {grantee}"))
    for table in tables:
        grant = SERVICE_GRANTS[table]
        target = f"{schema}.{_quote(conn, table)}"
        # REVOKE ALL on a table also revokes its column privileges: what follows is all the role holds.
        await conn.execute(text(f"REVOKE ALL ON TABLE {target} FROM {grantee}"))
        if grant.privileges:
            privileges = ", ".join(sorted(grant.privileges & GRANTABLE))
            await conn.execute(text(f"GRANT {privileges} ON TABLE {target} TO {grantee}"))
        for privilege, columns in grant.columns.items():
            if privilege not in GRANTABLE:
                raise PrivilegeError(f"{table}: {privilege} is never granted")
            listed = ", ".join(_quote(conn, c) for c in columns)
            await conn.execute(text(f"GRANT {privilege} ({listed}) ON TABLE {target} TO {grantee}"))
    granted_sequences = []
    for sequence, table in sequences:
        target = f"{schema}.{_quote(conn, sequence)}"
        await conn.execute(text(f"REVOKE ALL ON SEQUENCE {target} FROM {grantee}"))
        if table is not None and "INSERT" in SERVICE_GRANTS[table].privileges:
            # USAGE: nextval() for the owning table's serial column; not SELECT/UPDATE (setval).
            await conn.execute(text(f"GRANT USAGE ON SEQUENCE {target} TO {grantee}"))
            granted_sequences.append(sequence)
    can_create = bool((await conn.execute(_SCHEMA_CREATE, {"role": role})).scalar_one())
    has_temp = bool((await conn.execute(_DATABASE_TEMP, {"role": role})).scalar_one())
    if can_create or has_temp:
        log.warning("database.role.schema_or_temp", role=role, schema_create=can_create, database_temp=has_temp)
    return GrantSummary(role=role, tables=tuple(tables), sequences=tuple(granted_sequences),
                        public_create_revoked=public_create_revoked, can_create_in_schema=can_create,
                        has_temp=has_temp)


async def grant_service_privileges_at(database_url: str, role: str) -> GrantSummary:
    """`grant_service_privileges` in one transaction of its own (the CLI's and the migration job's way)."""
    from app.db import create_engine

    validate_role_name(role)
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            return await grant_service_privileges(conn, role)
    finally:
        await engine.dispose()


# --- what a role can do ----------------------------------------------------------------------------


class RoleState(StrEnum):
    OK = "ok"
    SUPERUSER = "superuser"
    OWNER = "owner"  # owns an audit table
    MEMBER_OF_OWNER = "member_of_owner"  # may act as the audit tables' owner
    TRIGGERS_OFF = "can_disable_triggers"  # may SET session_replication_role (PostgreSQL 15+ grant)
    EXCESS = "excess_privileges"  # more than SERVICE_GRANTS on an audit table
    NOT_APPLICABLE = "not_applicable"  # SQLite: no roles
    UNKNOWN = "unknown"  # the check could not run
    CHECKING = "checking"  # not done yet


@dataclass(frozen=True)
class TableFacts:
    table: str
    owner: str
    owned: bool  # the role is the owner
    member_of_owner: bool  # the role may act as the owner (membership, direct or not)
    privileges: frozenset[str]  # REPORTED privileges held, column grants as "UPDATE(id)"


@dataclass(frozen=True)
class RoleFacts:
    role: str
    superuser: bool
    can_set_replication_role: bool
    tables: tuple[TableFacts, ...]
    schema_create: bool = False  # may CREATE in the current schema (directly or through PUBLIC)
    database_temp: bool = False  # may create TEMP tables in the database (PUBLIC holds it by default)
    schema: str = "public"


@dataclass(frozen=True)
class RoleAssessment:
    state: RoleState
    reasons: tuple[str, ...]
    notes: tuple[str, ...] = ()  # facts worth knowing that do not make the role unsafe


def assess_role(facts: RoleFacts) -> RoleAssessment:
    """C6: can this role rewrite the audit trail without a superuser? The worst finding names the state."""
    audit = [t for t in facts.tables if t.table in AUDIT_TABLES]
    found: list[tuple[RoleState, str]] = []
    if facts.superuser:
        found.append((RoleState.SUPERUSER, f"{facts.role} is a superuser"))
    found += [(RoleState.OWNER, f"{facts.role} owns {t.table}") for t in audit if t.owned]
    found += [(RoleState.MEMBER_OF_OWNER, f"{facts.role} is a member of {t.owner}, owner of {t.table}")
              for t in audit if t.member_of_owner and not t.owned]
    if facts.can_set_replication_role:
        found.append((RoleState.TRIGGERS_OFF, f"{facts.role} may SET session_replication_role"))
    for t in audit:
        extra = t.privileges - SERVICE_GRANTS[t.table].expected()
        if extra and not (t.owned or t.member_of_owner or facts.superuser):
            found.append((RoleState.EXCESS, f"{facts.role} holds {', '.join(sorted(extra))} on {t.table}"))
    if facts.schema_create and not facts.superuser:
        # Objects of its own in the app's schema (functions, operators, tables) are what search_path attacks
        # on the trigger functions need; grant_service_privileges revokes it from the role and from PUBLIC.
        found.append((RoleState.EXCESS, f"{facts.role} may CREATE in schema {facts.schema}"))
    notes: tuple[str, ...] = ()
    if facts.database_temp and not facts.superuser:
        notes = (f"{facts.role} may create TEMP tables (TEMPORARY on the database, usually through PUBLIC); the "
                 "audit trigger functions ignore them (fixed search_path, migration 0011)",)
    if not found:
        return RoleAssessment(RoleState.OK, (), notes)
    order = list(RoleState)
    worst = min((state for state, _ in found), key=order.index)
    return RoleAssessment(worst, tuple(reason for _, reason in found), notes)


_FACTS = text(
    "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner, c.relowner = r.oid AS owned, "
    "pg_has_role(r.oid, c.relowner, 'MEMBER') AS member, "
    "has_table_privilege(r.oid, c.oid, 'SELECT') AS select, has_table_privilege(r.oid, c.oid, 'INSERT') AS insert, "
    "has_table_privilege(r.oid, c.oid, 'UPDATE') AS update, has_table_privilege(r.oid, c.oid, 'DELETE') AS delete, "
    "has_table_privilege(r.oid, c.oid, 'TRUNCATE') AS truncate, "
    "has_table_privilege(r.oid, c.oid, 'REFERENCES') AS references, "
    "has_table_privilege(r.oid, c.oid, 'TRIGGER') AS trigger "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "CROSS JOIN (SELECT oid FROM pg_roles WHERE rolname = :role) r "
    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') ORDER BY c.relname"
)
_SUPER = text("SELECT rolsuper FROM pg_roles WHERE rolname = :role")
_REPLICATION_ROLE = text("SELECT has_parameter_privilege(CAST(:role AS name), 'session_replication_role', 'SET')")
_COLUMN = text("SELECT has_column_privilege(CAST(:role AS name), CAST(:table AS text), CAST(:column AS text), "
               "CAST(:privilege AS text))")


async def inspect_role(conn: AsyncConnection, role: str | None = None) -> RoleFacts:
    """What `role` (default: the connected role) can do on the tables of the current schema."""
    if role is None:
        role = str((await conn.execute(text("SELECT current_user"))).scalar_one())
    superuser = (await conn.execute(_SUPER, {"role": role})).scalar_one_or_none()
    if superuser is None:
        raise PrivilegeError(f"role {role!r} does not exist")
    version = int((await conn.execute(text("SHOW server_version_num"))).scalar_one())
    # Before PostgreSQL 15 only a superuser may set session_replication_role.
    replication = bool(superuser) if version < 150000 else bool(
        (await conn.execute(_REPLICATION_ROLE, {"role": role})).scalar_one())
    tables = []
    for row in (await conn.execute(_FACTS, {"role": role})).mappings():
        held = {p for p in REPORTED if row[p.lower()]}
        grant = SERVICE_GRANTS.get(row["relname"])
        for privilege, columns in (grant.columns.items() if grant else ()):
            if privilege not in held and all([
                (await conn.execute(_COLUMN, {"role": role, "table": row["relname"], "column": c,
                                              "privilege": privilege})).scalar_one() for c in columns
            ]):
                held.add(f"{privilege}({','.join(columns)})")
        tables.append(TableFacts(table=row["relname"], owner=row["owner"], owned=row["owned"],
                                 member_of_owner=row["member"], privileges=frozenset(held)))
    schema = str((await conn.execute(text("SELECT current_schema()"))).scalar_one())
    return RoleFacts(role=role, superuser=bool(superuser), can_set_replication_role=replication,
                     tables=tuple(tables),
                     schema_create=bool((await conn.execute(_SCHEMA_CREATE, {"role": role})).scalar_one()),
                     database_temp=bool((await conn.execute(_DATABASE_TEMP, {"role": role})).scalar_one()),
                     schema=schema)


async def check_connected_role(engine: AsyncEngine) -> RoleAssessment:
    """The start-up check: "not applicable" on SQLite, else the assessment of the role the engine connects as."""
    if engine.dialect.name != "postgresql":
        return RoleAssessment(RoleState.NOT_APPLICABLE, ())
    async with engine.connect() as conn:
        return assess_role(await inspect_role(conn))
