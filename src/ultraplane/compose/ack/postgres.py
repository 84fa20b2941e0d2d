"""`postgres.ultraplane.io/v1alpha1` Database and Role on a PostgreSQL server, through psycopg.

Each managed database and role carries a COMMENT naming the Kubernetes object that owns it: a second object
naming the same database is ACK.Terminal unless annotated `services.k8s.aws/adoption-policy: adopt`, and a
database dropped out-of-band is re-created on the next resync. A Role's password is generated once into the
Secret `<name>-credentials` (host, port, user, password, dbname) and written to the server on every sync.
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql

from ultraplane.client.http import ApiError
from ultraplane.compose.ack.runtime import (
    AckController,
    KindInfo,
    Recoverable,
    Terminal,
    adopts,
    owner_marker,
)

Obj = dict[str, Any]
GROUP, VERSION = "postgres.ultraplane.io", "v1alpha1"
# unquoted-identifier rules, and PostgreSQL's NAMEDATALEN-1 limit (longer names are silently truncated)
IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")
ENCODINGS = {"UTF8", "SQL_ASCII", "LATIN1", "LATIN2", "LATIN9", "WIN1252", "EUC_JP"}


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    dbname: str = "postgres"

    @classmethod
    def from_url(cls, url: str) -> PostgresServer:
        parts = urlsplit(url)
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise ValueError(f"not a postgresql:// URL: {url!r}")
        return cls(parts.hostname, parts.port or 5432, unquote(parts.username or "postgres"),
                   unquote(parts.password or ""), parts.path.lstrip("/") or "postgres")

    @property
    def account(self) -> str:
        return f"{self.host}:{self.port}"

    async def connect(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(
                host=self.host, port=self.port, user=self.user, password=self.password, dbname=self.dbname,
                autocommit=True, connect_timeout=3)
        except psycopg.OperationalError as exc:
            raise Recoverable(f"PostgreSQL server {self.host}:{self.port} unreachable: "
                              f"{str(exc).strip().splitlines()[-1]}") from None


def _name(obj: Obj) -> str:
    name = (obj.get("spec") or {}).get("name") or obj["metadata"]["name"]
    if not IDENTIFIER.match(name):
        raise Terminal(f"InvalidParameter: {name!r} is not a valid PostgreSQL name "
                       "(lower-case letters, digits, _ and $, starting with a letter or _, at most 63 bytes)")
    return name


def _claim(kind: str, name: str, comment: str | None, obj: Obj) -> bool:
    """Whether `obj` may manage the existing `name`; True when the comment must be (re)written."""
    marker = owner_marker(obj)
    if comment == marker:
        return False
    if adopts(obj):
        return True
    owner = comment.split(" uid=")[0].removeprefix("ultraplane-ack ") if comment else "nobody (not managed)"
    raise Terminal(f"{kind} {name!r} already exists, owned by {owner}; annotate with "
                   "services.k8s.aws/adoption-policy: adopt to adopt it")


class DatabaseManager:
    info = KindInfo(GROUP, VERSION, "Database", "databases", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "database name (default: metadata.name)"},
            "owner": {"type": "string", "description": "owning role"},
            "encoding": {"type": "string", "default": "UTF8"},
        },
    })

    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    def identity(self, obj: Obj) -> tuple[str, str]:
        return (f"arn:ultraplane:postgres:local:{self.server.account}:database/{_name(obj)}", self.server.account)

    async def sync(self, obj: Obj, controller: AckController) -> Obj:
        spec = obj.get("spec") or {}
        name = _name(obj)
        encoding = (spec.get("encoding") or "UTF8").upper().replace("-", "")
        if encoding not in ENCODINGS:
            raise Terminal(f"InvalidParameter: encoding {spec.get('encoding')!r} is not supported")
        owner = spec.get("owner")
        if owner is not None and not IDENTIFIER.match(owner):
            raise Terminal(f"InvalidParameter: owner {owner!r} is not a valid PostgreSQL role name")
        async with await self.server.connect() as conn:
            row = await (await conn.execute(
                "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), "
                "shobj_description(d.oid, 'pg_database') FROM pg_database d WHERE datname = %s", (name,))).fetchone()
            if owner is not None and not await (await conn.execute(
                    "SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,))).fetchone():
                raise Recoverable(f"owner role {owner!r} does not exist yet")
            ident = sql.Identifier(name)
            if row is None:
                query = sql.SQL("CREATE DATABASE {} ENCODING {} TEMPLATE template0").format(
                    ident, sql.Literal(encoding))
                if owner:
                    query = sql.SQL("{} OWNER {}").format(query, sql.Identifier(owner))
                await conn.execute(query)
                await conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                    ident, sql.Literal(owner_marker(obj))))
                await controller.event(obj, "Normal", "Created", f"database {name} created")
            else:
                if _claim("database", name, row[3], obj):
                    await conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(
                        ident, sql.Literal(owner_marker(obj))))
                    await controller.event(obj, "Normal", "Adopted", f"database {name} adopted")
                if row[2] != encoding:
                    raise Terminal(f"InvalidParameter: encoding is immutable: database {name} is {row[2]}")
                if owner and row[1] != owner:
                    await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, sql.Identifier(owner)))
            row = await (await conn.execute(
                "SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding) FROM pg_database d "
                "WHERE datname = %s", (name,))).fetchone()
        assert row is not None
        return {"databaseName": name, "owner": row[1], "encoding": row[2], "oid": int(row[0]),
                "endpoint": {"address": self.server.host, "port": self.server.port}}

    async def delete(self, obj: Obj, controller: AckController) -> None:
        name = _name(obj)
        async with await self.server.connect() as conn:
            row = await (await conn.execute(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                (name,))).fetchone()
            if row is not None and row[0] == owner_marker(obj):  # never drop what another object owns
                await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


class RoleManager:
    info = KindInfo(GROUP, VERSION, "Role", "roles", {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "role name (default: metadata.name)"},
            "login": {"type": "boolean", "default": True},
            "connectionLimit": {"type": "integer", "default": -1, "minimum": -1},
            "database": {"type": "string", "description": "dbname written into the credentials Secret"},
        },
    })

    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    def identity(self, obj: Obj) -> tuple[str, str]:
        return (f"arn:ultraplane:postgres:local:{self.server.account}:role/{_name(obj)}", self.server.account)

    async def _password(self, obj: Obj, controller: AckController, name: str) -> tuple[str, str]:
        meta = obj["metadata"]
        secret_name = f"{meta['name']}-credentials"
        path = f"/api/v1/namespaces/{meta['namespace']}/secrets/{secret_name}"
        spec = obj.get("spec") or {}
        data = {"host": self.server.host, "port": str(self.server.port), "user": name,
                "dbname": spec.get("database") or name}
        try:
            secret = await controller.client.get(path)
            password = base64.b64decode((secret.get("data") or {}).get("password", "")).decode()
        except ApiError as exc:
            if exc.code != 404:
                raise
            secret, password = None, ""
        if not password:
            password = secrets.token_urlsafe(24)
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in {**data, "password": password}.items()}
        if secret is None:
            await controller.client.create(f"/api/v1/namespaces/{meta['namespace']}/secrets", {
                "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": secret_name, "namespace": meta["namespace"], "ownerReferences": [{
                    "apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": meta["name"],
                    "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
                "data": encoded})
        elif secret.get("data") != encoded:
            await controller.client.update(path, {**secret, "data": encoded})
        return secret_name, password

    async def sync(self, obj: Obj, controller: AckController) -> Obj:
        spec = obj.get("spec") or {}
        name = _name(obj)
        login = bool(spec.get("login", True))
        limit = int(spec.get("connectionLimit", -1))
        async with await self.server.connect() as conn:
            row = await (await conn.execute(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (name,))).fetchone()
            ident = sql.Identifier(name)
            if row is not None and _claim("role", name, row[0], obj):
                await controller.event(obj, "Normal", "Adopted", f"role {name} adopted")
            secret_name, password = await self._password(obj, controller, name)
            options = sql.SQL("{} CONNECTION LIMIT {} PASSWORD {}").format(
                sql.SQL("LOGIN" if login else "NOLOGIN"), sql.Literal(limit), sql.Literal(password))
            if row is None:
                await conn.execute(sql.SQL("CREATE ROLE {} {}").format(ident, options))
                await controller.event(obj, "Normal", "Created", f"role {name} created")
            else:
                await conn.execute(sql.SQL("ALTER ROLE {} {}").format(ident, options))
            await conn.execute(sql.SQL("COMMENT ON ROLE {} IS {}").format(ident, sql.Literal(owner_marker(obj))))
        return {"roleName": name, "login": login, "connectionLimit": limit, "credentialsSecret": secret_name,
                "endpoint": {"address": self.server.host, "port": self.server.port}}

    async def delete(self, obj: Obj, controller: AckController) -> None:
        name = _name(obj)
        async with await self.server.connect() as conn:
            row = await (await conn.execute(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = %s", (name,))).fetchone()
            if row is not None and row[0] == owner_marker(obj):
                try:
                    await conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
                except psycopg.errors.DependentObjectsStillReferenced as exc:
                    raise Recoverable(f"role {name} still owns objects: {exc}") from None
