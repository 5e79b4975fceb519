"""The ``postgres`` dumper: ``pg_dump`` custom format, loaded back with ``pg_restore``.

::

    [[cells.crm.dumpers]]
    type = "postgres"
    name = "db"
    dsn = "postgresql://crm@127.0.0.1:5432/crm"
    password_env = "CRM_PG_PASSWORD"     # or PGPASSWORD, ~/.pgpass, passfile

``pg_dump --format=custom`` takes a consistent snapshot (one repeatable-read
transaction) while the database is in use, and streams it straight into the
archive. Connection settings never go on a command line: the DSN is parsed
and handed to the tools as libpq environment variables (``PGHOST``,
``PGDATABASE``, ``PGPASSWORD``...), in the child's environment only.

Restore (``mode``):

* ``clean`` (default): ``pg_restore --clean --if-exists --single-transaction``
  into the database (created first if it is missing). One transaction: a
  failure rolls the database back to where it was. Objects created after the
  backup and not in the dump are left alone.
* ``replace``: restore into a new database, then swap names
  (``ALTER DATABASE ... RENAME``, in one transaction) and drop the old one:
  the database is exactly the dump's, and the old one is untouched until the
  swap. Needs no other session on the database (``terminate = true`` ends
  them).

``only_schemas`` and ``only_tables`` restore part of the dump (``clean``
mode only). A table is restored with what belongs to it: its indexes,
constraints, triggers, defaults, comments, grants, its sequences and their
values, and the foreign keys that point to it (dropped and re-added, so they
are checked against the restored rows). ``restore_dsn`` or
``restore_database`` restore into another database.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets as _secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from ..errors import ConfigError, LoadError
from ..hookspecs import hookimpl
from ..log import get_logger
from ..specs import DumperSpec
from ..tool import run_tool
from .base import DumpContext, Dumper, LoadContext
from .options import to_args, to_bool, to_list
from .pgroles import RELEVANT_ROLES_SQL, ROLES_FILE, filter_roles
from .staging import StagedLoad

__all__ = ["PostgresDumper", "parse_dsn"]

log = get_logger(__name__)

#: libpq connection keywords and the environment variable each has.
LIBPQ_ENV: Mapping[str, str] = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "requiressl": "PGREQUIRESSL",
    "sslcompression": "PGSSLCOMPRESSION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "channel_binding": "PGCHANNELBINDING",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
    "require_auth": "PGREQUIREAUTH",
}
_CONNINFO_PASSWORD = re.compile(r"(?P<k>\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")
_KV = re.compile(r"\s*(?P<key>[A-Za-z_]+)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|[^\s']*)")


def parse_dsn(dsn: str) -> dict[str, str]:
    """A libpq connection string (URI or ``key=value`` form) as keywords.

    Raises :class:`ValueError` (naming no value: DSNs hold passwords) when it
    is malformed or has a keyword libpq does not know.
    """
    dsn = dsn.strip()
    if not dsn:
        return {}
    out = _parse_uri(dsn) if re.match(r"postgres(ql)?://", dsn) else _parse_pairs(dsn)
    for key in out:
        if key not in LIBPQ_ENV:
            raise ValueError(f"the dsn has a keyword libpq does not know: {key!r}")
    return out


def _parse_uri(dsn: str) -> dict[str, str]:
    """``postgresql://user:password@host:port,host2/dbname?key=value`` as keywords."""
    out: dict[str, str] = {}
    rest = dsn.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostspec = netloc.rpartition("@")
    if not at:
        hostspec = netloc
    if userinfo:
        user, colon, password = userinfo.partition(":")
        if user:
            out["user"] = urllib.parse.unquote(user)
        if colon:
            out["password"] = urllib.parse.unquote(password)
    hosts, ports = [], []
    for item in filter(None, hostspec.split(",")):
        if item.startswith("["):
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        hosts.append(urllib.parse.unquote(host))
        ports.append(port)
    if any(hosts):
        out["host"] = ",".join(hosts)
    if any(ports):
        out["port"] = ",".join(ports)
    if path:
        out["dbname"] = urllib.parse.unquote(path)
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        out[key] = value
    return out


def _parse_pairs(dsn: str) -> dict[str, str]:
    """``host=db port=5432 password='two words'`` (libpq's key=value form) as keywords."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(dsn):
        match = _KV.match(dsn, pos)
        if not match or match.end() == pos:
            raise ValueError("the dsn is neither a postgresql:// URI nor key=value pairs")
        value = match["value"]
        if value.startswith("'"):
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        out[match["key"]] = value
        pos = match.end()
        while pos < len(dsn) and dsn[pos].isspace():
            pos += 1
    return out


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@attrs.define(kw_only=True)
class PostgresDumper(Dumper):
    """One PostgreSQL database, dumped with pg_dump and restored with pg_restore."""

    type: ClassVar[str] = "postgres"

    #: libpq connection string: ``postgresql://user@host:port/db?sslmode=...`` or ``host=... dbname=...``.
    dsn: str = attrs.field(default="", repr=False)
    #: Override what the DSN says (or give the connection without one).
    host: str | None = None
    port: str | None = attrs.field(default=None, converter=attrs.converters.optional(str))
    user: str | None = None
    database: str | None = None
    #: Name of an environment variable holding the password (passed on as PGPASSWORD).
    password_env: str | None = None
    #: The password itself (prefer password_env, PGPASSWORD or a .pgpass file).
    password: str | None = attrs.field(default=None, repr=False)
    #: A .pgpass file (PGPASSFILE).
    passfile: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    #: Dump only these schemas (pg_dump -n), not these (-N), not these tables (-T).
    schemas: tuple[str, ...] = attrs.field(default=(), converter=to_list)
    exclude_schemas: tuple[str, ...] = attrs.field(default=(), converter=to_list)
    exclude_tables: tuple[str, ...] = attrs.field(default=(), converter=to_list)
    #: pg_dump's own compression (0-9). 0 by default: the archive's codec compresses better and faster.
    compress: int = attrs.field(default=0, converter=int)
    #: Extra pg_dump and pg_restore arguments.
    dump_args: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    restore_args: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    #: Restore into another server or database (default: where it was dumped from).
    restore_dsn: str | None = attrs.field(default=None, repr=False)
    restore_database: str | None = None
    #: ``clean`` (in place, one transaction) or ``replace`` (new database, then swap names).
    mode: str = attrs.field(default="clean", validator=attrs.validators.in_(("clean", "replace")))
    #: Restore only these schemas; only these tables (``schema.table`` or ``table``).
    only_schemas: tuple[str, ...] = attrs.field(default=(), converter=to_list)
    only_tables: tuple[str, ...] = attrs.field(default=(), converter=to_list)
    #: Do not restore ownership (pg_restore --no-owner), for a database with other roles.
    no_owner: bool = attrs.field(default=False, converter=to_bool)
    #: Create the database when it is missing.
    create_database: bool = attrs.field(default=True, converter=to_bool)
    #: mode=replace: end other sessions on the database before the swap.
    terminate: bool = attrs.field(default=False, converter=to_bool)
    #: mode=replace: keep the old database, renamed, instead of dropping it.
    keep_old: bool = attrs.field(default=False, converter=to_bool)
    #: The database to connect to for CREATE, RENAME and DROP DATABASE.
    maintenance_db: str = "postgres"
    #: Also store the roles the database uses (``roles.sql``, no passwords), created on restore.
    roles: bool = attrs.field(default=False, converter=to_bool)

    secret_fields: ClassVar[frozenset[str]] = frozenset({"password"})

    def __attrs_post_init__(self) -> None:
        for field in ("dsn", "restore_dsn"):
            try:
                parse_dsn(getattr(self, field) or "")
            except ValueError as exc:
                raise ConfigError(f"dumper {self.name} (type postgres): {field}: {exc}") from None
        if self._keywords(self.dsn).get("dbname") is None:
            raise ConfigError(
                f"dumper {self.name} (type postgres): no database given",
                hint="name it in the dsn (postgresql://host/dbname) or with database = ...",
            )
        if (self.only_tables or self.only_schemas) and self.mode == "replace":
            raise ConfigError(
                f"dumper {self.name} (type postgres): only_tables and only_schemas need mode = clean",
                hint="mode = replace swaps whole databases",
            )

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        for key in ("dsn", "restore_dsn"):
            if out.get(key):
                out[key] = _CONNINFO_PASSWORD.sub(r"\g<k>***", out[key])
        return out

    # -- connections -----------------------------------------------------------------

    def _keywords(self, dsn: str, *, restore: bool = False) -> dict[str, str]:
        keywords = parse_dsn(dsn)
        for key, value in (
            ("host", self.host),
            ("port", self.port),
            ("user", self.user),
            ("dbname", self.database),
        ):
            if value and not (restore and self.restore_dsn and key in keywords):
                keywords[key] = value
        if restore and self.restore_database:
            keywords["dbname"] = self.restore_database
        return keywords

    def _secret(self) -> str | None:
        if self.password:
            return self.password
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"dumper {self.name} (type postgres): environment variable "
                    f"{self.password_env} (password_env) is not set"
                )
            return value
        return None

    def _env(self, keywords: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
        """The child's environment for *keywords*, and the secrets to mask in its output."""
        env = dict(os.environ)
        password = keywords.get("password") or self._secret()
        for key, value in keywords.items():
            if key != "password":
                env[LIBPQ_ENV[key]] = value
        if password:
            env["PGPASSWORD"] = password
        if self.passfile is not None:
            env["PGPASSFILE"] = str(self.passfile)
        # Never prompt: a missing password is an error, not a hung backup.
        return env, [password] if password else []

    def probe(self) -> str:
        """Connect with the dump's settings; check CONNECT and the client tools."""
        tools = []
        for program in ("pg_dump", "pg_restore", "psql"):
            found = run_tool([program, "--version"], what=f"dumper {self.name}", timeout=30)
            tools.append(found.stdout.decode().strip())
        keywords = self._keywords(self.dsn)
        env, secrets = self._env(keywords)
        sql = "SELECT current_user || ' on ' || split_part(version(), ' ', 2);"
        result = run_tool(
            ["psql", "--no-psqlrc", "--no-password", "--tuples-only", "--no-align", "-c", sql],
            what=f"dumper {self.name}: psql",
            env=env,
            secrets=secrets,
            timeout=30,
            hint="check dsn (host, port, database), the user and the password",
        )
        who = result.stdout.decode().strip()
        return f"connected as {who} to {keywords.get('dbname', '')}; {tools[0]}"

    def _target(self) -> dict[str, str]:
        return self._keywords(self.restore_dsn or self.dsn, restore=True)

    # -- backup ----------------------------------------------------------------------

    def dump(self, ctx: DumpContext) -> None:
        keywords = self._keywords(self.dsn)
        env, secrets = self._env(keywords)
        argv = ["pg_dump", "--format=custom", f"--compress={self.compress}", "--no-password"]
        argv += [f"--schema={s}" for s in self.schemas]
        argv += [f"--exclude-schema={s}" for s in self.exclude_schemas]
        argv += [f"--exclude-table={t}" for t in self.exclude_tables]
        argv += self.dump_args
        version = run_tool(["pg_dump", "--version"], what=f"{ctx.where}: pg_dump", timeout=60)
        ctx.info.update(
            database=keywords["dbname"],
            host=keywords.get("host", ""),
            pg_dump=version.stdout.decode().strip(),
        )
        ctx.run(
            argv,
            stdout_to=self.filename(keywords),
            env=env,
            secrets=secrets,
            hint="check the dsn, the password (password_env, PGPASSWORD, .pgpass) and that the "
            "server is up",
        )
        if self.roles:
            self._dump_roles(ctx, env, secrets)

    def _dump_roles(self, ctx: DumpContext, env: dict[str, str], secrets: list[str]) -> None:
        """Store the roles the database uses (see :mod:`cellvault.dumpers.pgroles`)."""
        argv = ["psql", "--no-psqlrc", "--no-password", "--tuples-only", "--no-align"]
        used = run_tool(
            [*argv, "-c", RELEVANT_ROLES_SQL],
            what=f"{ctx.where}: psql",
            env=env,
            secrets=secrets,
            timeout=self.timeout,
        )
        keep = set(used.stdout.decode().split())
        everything = run_tool(
            ["pg_dumpall", "--roles-only", "--no-role-passwords", "--no-password"],
            what=f"{ctx.where}: pg_dumpall --roles-only",
            env=env,
            secrets=secrets,
            timeout=self.timeout,
            hint="pg_dumpall --roles-only reads pg_authid: the user needs to be a superuser, "
            "or set roles = false",
        )
        with ctx.open(ROLES_FILE) as out:
            out.write(filter_roles(everything.stdout.decode(), keep).encode())
        ctx.info["roles"] = sorted(keep)

    def _load_roles(self, ctx: LoadContext) -> None:
        """Create the stored roles on the restore server; existing ones are left as they are."""
        if not self.roles or ROLES_FILE not in ctx.files():
            return
        env, secrets = self._env(self._maintenance(self._target()))
        ctx.run(
            ["psql", "--no-psqlrc", "--no-password", "--quiet"],
            stdin=ROLES_FILE,
            env=env,
            secrets=secrets,
            stdout="discard",
        )

    @staticmethod
    def filename(keywords: Mapping[str, str]) -> str:
        name = re.sub(r"[^A-Za-z0-9._-]", "_", keywords["dbname"]).lstrip(".") or "database"
        return f"{name}.pgdump"

    def stock_restore(self, files: Sequence[str]) -> str | None:
        return (
            "pg_restore --clean --if-exists --single-transaction --exit-on-error "
            f"--dbname=<database> {files[0] if files else '<file>'}"
        )

    # -- restore ---------------------------------------------------------------------

    def _psql(
        self, ctx: LoadContext | None, keywords: Mapping[str, str], sql: str, **variables: str
    ) -> str:
        """Run *sql* with psql (through *ctx*, or on its own after a kill); its output."""
        env, secrets = self._env(keywords)
        argv = ["psql", "--no-psqlrc", "--no-password", "--quiet", "--tuples-only", "--no-align"]
        argv += ["--set=ON_ERROR_STOP=1"]
        argv += [f"--set={k}={v}" for k, v in variables.items()]
        if ctx is not None:
            result = ctx.run(argv, stdin=sql.encode(), env=env, secrets=secrets)
        else:
            result = run_tool(
                argv,
                what=f"dumper {self.name}: psql",
                error=LoadError,
                env=env,
                stdin=sql.encode(),
                secrets=secrets,
                timeout=self.timeout,
            )
        return result.stdout.decode().strip()

    def _maintenance(self, keywords: Mapping[str, str]) -> dict[str, str]:
        return {**keywords, "dbname": self.maintenance_db}

    def _exists(self, ctx: LoadContext | None, keywords: Mapping[str, str], db: str) -> bool:
        sql = "SELECT 1 FROM pg_database WHERE datname = :'db';\n"
        return self._psql(ctx, self._maintenance(keywords), sql, db=db) == "1"

    def _create(self, ctx: LoadContext | None, keywords: Mapping[str, str], db: str) -> None:
        self._psql(ctx, self._maintenance(keywords), 'CREATE DATABASE :"db";\n', db=db)

    def _drop(self, ctx: LoadContext | None, keywords: Mapping[str, str], db: str) -> None:
        self._psql(ctx, self._maintenance(keywords), 'DROP DATABASE IF EXISTS :"db";\n', db=db)

    def _pg_restore(
        self,
        ctx: LoadContext,
        keywords: Mapping[str, str],
        dump: Path,
        *,
        clean: bool,
        listing: Path | None = None,
    ) -> None:
        env, secrets = self._env(keywords)
        argv = ["pg_restore", "--single-transaction", "--exit-on-error", "--no-password"]
        if clean:
            argv += ["--clean", "--if-exists"]
        if self.no_owner:
            argv.append("--no-owner")
        argv += [f"--schema={s}" for s in self.only_schemas]
        if listing is not None:
            argv.append(f"--use-list={listing}")
        argv += self.restore_args
        # A conninfo rather than a bare name: a database name with '=' is still a name.
        dbname = keywords["dbname"].replace("\\", "\\\\").replace("'", "\\'")
        argv += [f"--dbname=dbname='{dbname}'", str(dump)]
        ctx.run(
            argv,
            env=env,
            secrets=secrets,
            hint="pg_restore ran in one transaction: the database is as it was before",
        )

    def load(self, ctx: LoadContext) -> None:
        files = [f for f in ctx.files() if f != ROLES_FILE]
        if len(files) != 1:
            raise LoadError(f"{ctx.where}: expected one .pgdump file, found {files}")
        self._load_roles(ctx)
        dump = ctx.path(files[0])
        keywords = self._target()
        db = keywords["dbname"]
        if self.mode == "replace":
            self._replace(ctx, keywords, dump)
            return
        if not self._exists(ctx, keywords, db):
            if not self.create_database:
                raise LoadError(
                    f"{ctx.where}: database {db} does not exist",
                    hint="create it, or set create_database = true",
                )
            self._create(ctx, keywords, db)
        listing = self._table_list(ctx, dump) if self.only_tables else None
        self._pg_restore(ctx, keywords, dump, clean=True, listing=listing)

    def stage(self, ctx: LoadContext) -> StagedLoad | None:
        """``mode = replace``: load into a scratch database on the same server, swapped in by renaming.

        ``mode = clean`` restores into the live database (keeping what the
        dump does not know), so it cannot stage: it loads before the swap.
        """
        if self.mode != "replace":
            return ctx.cannot_stage(
                "mode = clean merges the dump into the live database; mode = replace stages"
            )
        files = [f for f in ctx.files() if f != ROLES_FILE]
        if len(files) != 1:
            raise LoadError(f"{ctx.where}: expected one .pgdump file, found {files}")
        self._load_roles(ctx)
        dump = ctx.path(files[0])
        keywords = self._target()
        db = keywords["dbname"]
        suffix = _secrets.token_hex(4)
        fresh, old = f"{db[:40]}_cvnew_{suffix}", f"{db[:40]}_cvold_{suffix}"
        where = f"database {db} on {keywords.get('host', 'localhost')}"
        swap = _DatabaseSwap(self.name, where, fresh, owner=self, ctx=ctx, db=db, old=old)
        ctx.side_created(swap)  # journalled before it exists: a kill after CREATE leaves it named
        self._create(ctx, keywords, fresh)
        try:
            self._pg_restore(ctx, {**keywords, "dbname": fresh}, dump, clean=False)
        except BaseException:
            with contextlib.suppress(LoadError):
                self._drop(ctx, keywords, fresh)
            raise
        return swap

    def rename_swap(self, ctx: LoadContext | None, db: str, fresh: str, old: str) -> bool:
        """Rename *db* to *old* and *fresh* to *db*, in one transaction (sessions ended with ``terminate``).

        Returns whether *db* existed (and is now *old*).
        """
        keywords = self._target()
        exists = self._exists(ctx, keywords, db)
        sql = ""
        if exists:
            if self.terminate:
                sql += (
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :'db' AND pid <> pg_backend_pid();\n"
                )
            sql += 'BEGIN;\nALTER DATABASE :"db" RENAME TO :"old";\n'
        else:
            sql += "BEGIN;\n"
        sql += 'ALTER DATABASE :"fresh" RENAME TO :"db";\nCOMMIT;\n'
        self._psql(ctx, self._maintenance(keywords), sql, db=db, old=old, fresh=fresh)
        return exists

    def drop_database(self, ctx: LoadContext | None, db: str) -> None:
        """Drop *db* on the dumper's server (a scratch or an old database)."""
        self._drop(ctx, self._target(), db)

    def database_exists(self, db: str) -> bool:
        """Whether *db* exists on the dumper's restore server."""
        return self._exists(None, self._target(), db)

    def resume(self, state: Mapping[str, Any]) -> StagedLoad | None:
        """A scratch database a killed restore left (``mode = replace``, or ``clean`` staged)."""
        names = [state.get(k) for k in ("side", "old", "db")]
        if not all(isinstance(n, str) and n for n in names):
            return None
        side, old, db = (str(n) for n in names)
        return _DatabaseSwap(
            self.name,
            str(state.get("what")),
            side,
            owner=self,
            ctx=None,
            db=db,
            old=old,
            had_old=self.database_exists(old),
        )

    def _replace(self, ctx: LoadContext, keywords: dict[str, str], dump: Path) -> None:
        db = keywords["dbname"]
        suffix = _secrets.token_hex(4)
        fresh = f"{db[:40]}_cvnew_{suffix}"
        old = f"{db[:40]}_cvold_{suffix}"
        self._create(ctx, keywords, fresh)
        try:
            self._pg_restore(ctx, {**keywords, "dbname": fresh}, dump, clean=False)
            exists = self._exists(ctx, keywords, db)
            sql = ""
            if exists and self.terminate:
                sql += (
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :'db' AND pid <> pg_backend_pid();\n"
                )
            sql += "BEGIN;\n"
            if exists:
                sql += 'ALTER DATABASE :"db" RENAME TO :"old";\n'
            sql += 'ALTER DATABASE :"fresh" RENAME TO :"db";\nCOMMIT;\n'
            self._psql(ctx, self._maintenance(keywords), sql, db=db, old=old, fresh=fresh)
        except BaseException:
            try:
                self._drop(ctx, keywords, fresh)
            except LoadError as exc:
                log.warning("dump.cleanup_failed", database=fresh, error=str(exc))
            raise
        if exists and not self.keep_old:
            try:
                self._drop(ctx, keywords, old)
            except LoadError as exc:
                log.warning("dump.old_database_kept", database=old, error=str(exc))
        elif exists:
            log.info("dump.old_database_kept", database=old)

    # -- one table -------------------------------------------------------------------

    def _table_list(self, ctx: LoadContext, dump: Path) -> Path:
        """A pg_restore ``--use-list`` selecting :attr:`only_tables` and what belongs to them."""
        toc = ctx.run(["pg_restore", "--list", str(dump)]).stdout.decode()
        schema_sql = ctx.run(
            ["pg_restore", "--schema-only", "--verbose", "--file=-", str(dump)]
        ).stdout.decode()
        entries = _toc_entries(schema_sql)
        wanted = [_split_table(t) for t in self.only_tables]
        chosen: set[int] = set()
        for dump_id, (kind, schema, name, _) in entries.items():
            if kind in ("TABLE", "VIEW", "MATERIALIZED VIEW", "FOREIGN TABLE") and any(
                name == t and (s is None or s == schema) for s, t in wanted
            ):
                if self.only_schemas and schema not in self.only_schemas:
                    continue
                chosen.add(dump_id)
        missing = [
            f"{s}.{t}" if s else t
            for s, t in wanted
            if not any(entries[i][2] == t and (s is None or entries[i][1] == s) for i in chosen)
        ]
        if missing:
            raise LoadError(
                f"{ctx.where}: the dump has no table {missing[0]}",
                hint="name tables as schema.table, as pg_dump listed them",
            )
        tables = {(entries[i][1], entries[i][2]) for i in chosen}
        # What belongs to a chosen table depends on it: add dependents until nothing changes.
        changed = True
        while changed:
            changed = False
            for dump_id, (kind, _, _, deps) in entries.items():
                if dump_id in chosen or kind not in _BELONGS:
                    continue
                if any(d in chosen for d in deps):
                    chosen.add(dump_id)
                    changed = True
        sequences = {(entries[i][1], entries[i][2]) for i in chosen if entries[i][0] == "SEQUENCE"}
        lines = []
        for line in toc.splitlines():
            match = _TOC_LINE.match(line)
            if not match:
                continue
            dump_id = int(match["id"])
            data = _TOC_DATA.match(match["rest"])
            if dump_id in chosen:
                lines.append(line)
            elif data is not None:
                key = (data["schema"], data["name"])
                if (data["kind"] == "TABLE DATA" and key in tables) or (
                    data["kind"] == "SEQUENCE SET" and key in sequences
                ):
                    lines.append(line)
        listing = ctx.spool / "restore.list"
        listing.write_text("\n".join(lines) + "\n")
        log.info("dump.table_list", cell=ctx.cell.name, dumper=self.name, entries=len(lines))
        return listing


#: Kinds of TOC entries restored with the table they depend on.
_BELONGS = frozenset(
    {
        "INDEX",
        "CONSTRAINT",
        "FK CONSTRAINT",
        "CHECK CONSTRAINT",
        "TRIGGER",
        "DEFAULT",
        "RULE",
        "POLICY",
        "ROW SECURITY",
        "COMMENT",
        "ACL",
        "SEQUENCE",
        "SEQUENCE OWNED BY",
        "INDEX ATTACH",
        "STATISTICS",
    }
)
_TOC_LINE = re.compile(r"^(?P<id>\d+); \d+ \d+ (?P<rest>.*)$")
_TOC_DATA = re.compile(r"^(?P<kind>TABLE DATA|SEQUENCE SET) (?P<schema>\S+) (?P<name>.+) \S+$")
_HEADER = re.compile(r"^-- TOC entry (?P<id>\d+) ")
_DEPS = re.compile(r"^-- Dependencies: (?P<deps>[\d ]+)$")
_NAME = re.compile(r"^-- Name: (?P<name>.*); Type: (?P<kind>.*); Schema: (?P<schema>.*); Owner: ")


def _toc_entries(verbose_sql: str) -> dict[int, tuple[str, str, str, list[int]]]:
    """TOC entries of ``pg_restore --verbose --schema-only`` output: id -> (kind, schema, name, deps)."""
    out: dict[int, tuple[str, str, str, list[int]]] = {}
    current: int | None = None
    deps: list[int] = []
    for line in verbose_sql.splitlines():
        if match := _HEADER.match(line):
            current, deps = int(match["id"]), []
        elif current is not None and (match := _DEPS.match(line)):
            deps = [int(d) for d in match["deps"].split()]
        elif current is not None and (match := _NAME.match(line)):
            schema = "" if match["schema"] == "-" else match["schema"]
            out[current] = (match["kind"], schema, match["name"], deps)
            current = None
    return out


def _split_table(text: str) -> tuple[str | None, str]:
    schema, dot, table = text.rpartition(".")
    return (schema if dot else None), table


@hookimpl
def cellvault_make_dumper(spec: DumperSpec) -> Dumper | None:
    return PostgresDumper.from_spec(spec) if spec.type == "postgres" else None


@attrs.define
class _DatabaseSwap(StagedLoad):
    """A scratch database, swapped with the live one by ``ALTER DATABASE ... RENAME``."""

    owner: PostgresDumper = attrs.field(kw_only=True)
    ctx: LoadContext | None = attrs.field(kw_only=True)
    db: str = attrs.field(kw_only=True)
    old: str = attrs.field(kw_only=True)
    had_old: bool = attrs.field(default=False, kw_only=True)

    def swap(self) -> None:
        self.had_old = self.owner.rename_swap(self.ctx, self.db, self.side, self.old)

    def unswap(self) -> None:
        # The restored database goes back to its scratch name, the old one to its own.
        if self.had_old:
            self.owner.rename_swap(self.ctx, self.db, self.old, self.side)
        else:
            self.owner.rename_swap(self.ctx, self.side, self.db, self.side + "_x")
        self.had_old = False

    def discard(self) -> None:
        try:
            self.owner.drop_database(self.ctx, self.side)
        except LoadError as exc:
            log.warning("dump.cleanup_failed", database=self.side, error=str(exc))

    def commit(self) -> None:
        if not self.had_old:
            return
        if self.owner.keep_old:
            log.info("dump.old_database_kept", database=self.old)
            return
        try:
            self.owner.drop_database(self.ctx, self.old)
        except LoadError as exc:
            log.warning("dump.old_database_kept", database=self.old, error=str(exc))

    def swapped(self) -> bool:
        # The rename moves the scratch database away in one transaction.
        return not self.owner.database_exists(self.side)

    def state(self) -> dict[str, Any]:
        # Once swapped in, the replaced database has this name.
        return {**super().state(), "old": self.old, "db": self.db}
