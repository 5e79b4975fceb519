"""The ``mysql`` dumper: MySQL and MariaDB with ``mysqldump``/``mariadb-dump``, loaded with the client.

::

    [[cells.crm.dumpers]]
    type = "mysql"
    dsn = "mysql://crm@127.0.0.1:3306/crm"
    password_env = "CRM_MYSQL_PASSWORD"      # or defaults_file = "/etc/crm/my.cnf"

The dump runs ``--single-transaction --routines --triggers --events
--add-drop-database --hex-blob --databases <db>...``: one consistent
snapshot of InnoDB tables without locking writers out (MyISAM tables are not
transactional and get no such guarantee). It is streamed straight into the
archive. A password never goes on a command line: it is written to a
temporary ``--defaults-extra-file`` (mode 0600, in a private folder, deleted
afterwards), which can ``!include`` your own options file.

Restore pipes the dump into ``mariadb``/``mysql``, optionally filtered:
``only_databases``, ``only_tables`` (``db.table``; a bare ``table`` when
the dump holds one database) or ``restore_database`` (load one database
under another name). A table is restored with its triggers; the rest of the
database is untouched.

MySQL cannot load a dump atomically: every ``CREATE``/``DROP`` commits. A
load that fails part-way leaves the tables before the failing statement
restored, that one dropped or partly filled, and the later ones as they were.
The restore then stops before any file is swapped, and the safety backup
taken before the restore holds the database as it was: restore that archive
to go back.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets as _secrets
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, ClassVar

import attrs

from ..errors import ConfigError, DumpError, LoadError
from ..hookspecs import hookimpl
from ..log import get_logger
from ..specs import DumperSpec
from ..tool import run_tool
from .base import DumpContext, Dumper, LoadContext
from .mytables import MOVABLE_SQL, TableSwap, ident
from .myusers import USERS_FILE, grantees_sql, users_sql
from .options import to_args, to_bool, to_list
from .staging import StagedLoad

__all__ = ["MysqlDumper", "filter_dump"]

log = get_logger(__name__)

FILENAME = "dump.sql"
#: Why a database with views, routines, events or triggers cannot stage.
_UNMOVABLE = (
    "{db} has views, routines, events or triggers, which RENAME TABLE cannot move "
    "to another database"
)


def _program(*names: str) -> str:
    for name in names:
        if shutil.which(name):
            return name
    return names[-1]


def _option_value(value: str) -> str:
    """Quote a value for a MySQL option file."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


@attrs.define(kw_only=True)
class MysqlDumper(Dumper):
    """Databases of one MySQL or MariaDB server, in one consistent dump."""

    type: ClassVar[str] = "mysql"

    #: ``mysql://user[:password]@host[:port]/db1,db2``: a short form of the fields below.
    dsn: str = attrs.field(default="", repr=False)
    host: str | None = None
    port: int | None = attrs.field(default=None, converter=attrs.converters.optional(int))
    #: A Unix socket instead of host and port.
    socket: str | None = None
    user: str | None = None
    #: Name of an environment variable holding the password.
    password_env: str | None = None
    #: The password itself (prefer password_env or defaults_file).
    password: str | None = attrs.field(default=None, repr=False)
    #: An options file with ``[client]`` settings (user, password, host, ssl-*...).
    defaults_file: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(Path)
    )
    #: The databases to dump (required, here or in the dsn's path).
    databases: tuple[str, ...] = attrs.field(default=(), converter=to_list)
    #: Programs (default: the MariaDB names when installed, else the MySQL ones).
    dump_program: str = attrs.field(factory=lambda: _program("mariadb-dump", "mysqldump"))
    client_program: str = attrs.field(factory=lambda: _program("mariadb", "mysql"))
    dump_args: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    restore_args: tuple[str, ...] = attrs.field(default=(), converter=to_args)
    #: Restore only these databases; only these tables (``db.table``).
    only_databases: tuple[str, ...] = attrs.field(default=(), converter=to_list)
    only_tables: tuple[str, ...] = attrs.field(default=(), converter=to_list)
    #: Load the (one) restored database under this name instead.
    restore_database: str | None = None
    #: Drop each restored database first (whole-database restores), so that it
    #: is exactly the dump's. Off: tables created since the backup stay.
    clean: bool = attrs.field(default=True, converter=to_bool)
    #: Also store the users with privileges on the databases, and those grants
    #: (``users.sql``, see :mod:`.myusers`); created on restore when missing.
    users: bool = attrs.field(default=False, converter=to_bool)

    secret_fields: ClassVar[frozenset[str]] = frozenset({"password"})

    def __attrs_post_init__(self) -> None:
        where = f"dumper {self.name} (type mysql)"
        if self.dsn:
            if not self.dsn.startswith(("mysql://", "mariadb://")):
                raise ConfigError(f"{where}: dsn must look like mysql://user@host:port/database")
            url = urllib.parse.urlsplit(self.dsn)
            try:
                port = url.port
            except ValueError:
                raise ConfigError(f"{where}: the dsn's port is not a number") from None
            self.host = self.host or url.hostname
            self.port = self.port or port
            self.user = self.user or (urllib.parse.unquote(url.username) if url.username else None)
            if url.password is not None and self.password is None:
                self.password = urllib.parse.unquote(url.password)
            if not self.databases and url.path.strip("/"):
                self.databases = to_list(urllib.parse.unquote(url.path.strip("/")))
        if not self.databases:
            raise ConfigError(
                f"{where}: no databases given",
                hint="name them with databases = [...] or in the dsn (mysql://host/db)",
            )
        if self.restore_database and len(self._restored()) != 1:
            raise ConfigError(
                f"{where}: restore_database needs exactly one database to restore",
                hint="narrow it with only_databases",
            )

    def _restored(self) -> list[str]:
        dbs = list(self.only_databases or self.databases)
        for spec in self.only_tables:
            db, dot, _ = spec.rpartition(".")
            if dot and db not in dbs:
                dbs.append(db)
        return dbs

    # -- connections -----------------------------------------------------------------

    def _secret(self) -> str | None:
        if self.password:
            return self.password
        if self.password_env:
            value = os.environ.get(self.password_env)
            if value is None:
                raise ConfigError(
                    f"dumper {self.name} (type mysql): environment variable "
                    f"{self.password_env} (password_env) is not set"
                )
            return value
        return None

    @contextlib.contextmanager
    def _connection(self) -> Iterator[tuple[list[str], list[str]]]:
        """Leading arguments that connect (an options file first), and the secrets to mask."""
        password = self._secret()
        args: list[str] = []
        folder: str | None = None
        try:
            if password is not None:
                folder = tempfile.mkdtemp(prefix="cellvault-mysql-")  # mode 0700
                path = Path(folder) / "client.cnf"
                lines = []
                if self.defaults_file is not None:
                    lines.append(f"!include {self.defaults_file}")
                lines += ["[client]", f"password={_option_value(password)}"]
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write("\n".join(lines) + "\n")
                args.append(f"--defaults-extra-file={path}")
            elif self.defaults_file is not None:
                args.append(f"--defaults-extra-file={self.defaults_file}")
            if self.socket:
                args.append(f"--socket={self.socket}")
            else:
                if self.host:
                    args.append(f"--host={self.host}")
                if self.port:
                    args.append(f"--port={self.port}")
            if self.user:
                args.append(f"--user={self.user}")
            yield args, [password] if password else []
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)

    # -- backup ----------------------------------------------------------------------

    def probe(self) -> str:
        """Connect with the dump's settings; check the databases are visible and the tools run."""
        tool = run_tool([self.dump_program, "--version"], what=f"dumper {self.name}", timeout=30)
        with self._connection() as (conn, secrets):
            result = run_tool(
                [self.client_program, *conn, "--batch", "--skip-column-names", "-e",
                 "SELECT CONCAT('user=', CURRENT_USER(), ' version=', VERSION()); SHOW DATABASES;"],
                what=f"dumper {self.name}: {self.client_program}",
                secrets=secrets,
                timeout=30,
                hint="check host, port, user and the password (password_env, defaults_file)",
            )  # fmt: skip
        first, *visible = result.stdout.decode().splitlines()
        missing = [d for d in self.databases if d not in visible]
        if missing:
            raise DumpError(
                f"dumper {self.name}: database {missing[0]} is not visible to this user",
                hint="create it, or grant this user SELECT, SHOW VIEW, TRIGGER, EVENT and "
                "LOCK TABLES on it",
            )
        return f"connected ({first}); {tool.stdout.decode().strip()}"

    def dump(self, ctx: DumpContext) -> None:
        version = run_tool([self.dump_program, "--version"], what=ctx.where, timeout=60)
        ctx.info.update(
            databases=list(self.databases),
            host=self.socket or self.host or "",
            tool=version.stdout.decode().strip(),
        )
        with self._connection() as (conn, secrets):
            argv = [
                self.dump_program,
                *conn,
                "--single-transaction",
                "--routines",
                "--triggers",
                "--events",
                "--add-drop-database",
                "--hex-blob",
                "--default-character-set=utf8mb4",
                *self.dump_args,
                "--databases",
                *self.databases,
            ]
            ctx.run(
                argv,
                stdout_to=FILENAME,
                secrets=secrets,
                hint="check host, user, the password (password_env, defaults_file) and that "
                "the databases exist",
            )
        if self.users:
            self._dump_users(ctx)

    def _query(self, sql: str) -> str:
        """Run *sql* on the dump's server; its raw output (batch, no column names)."""
        with self._connection() as (conn, secrets):
            result = run_tool(
                [self.client_program, *conn, "--batch", "--raw", "--skip-column-names", "-e", sql],
                what=f"dumper {self.name}: {self.client_program}",
                secrets=secrets,
                timeout=self.timeout,
                hint="users = true reads mysql.user and the grants: the user needs SELECT on "
                "the mysql database, or set users = false",
            )
        return result.stdout.decode()

    def _dump_users(self, ctx: DumpContext) -> None:
        """Store the users with privileges on the dumped databases (see :mod:`.myusers`)."""
        grantees = [g for g in self._query(grantees_sql(self.databases)).splitlines() if g]
        out = []
        for grantee in grantees:
            create = self._query(f"SHOW CREATE USER {grantee};")
            grants = self._query(f"SHOW GRANTS FOR {grantee};").splitlines()
            try:
                out.append(users_sql(create, grants, self.databases))
            except ValueError as exc:
                raise DumpError(f"{ctx.where}: {grantee}: {exc}") from None
        with ctx.open(USERS_FILE) as f:
            f.write("".join(out).encode())
        ctx.info["users"] = grantees

    def _load_users(self, ctx: LoadContext) -> None:
        """Create the stored users when missing, and give their grants (before the data)."""
        if not self.users or USERS_FILE not in ctx.files():
            return
        with ctx.open(USERS_FILE) as raw:
            sql = raw.read()
        if sql.strip():
            with self._connection() as (conn, secrets):
                ctx.run([self.client_program, *conn, "--batch"], stdin=sql, secrets=secrets)

    def stock_restore(self, files: Sequence[str]) -> str | None:
        return f"{self.client_program} --user=<user> -p < {FILENAME}"

    # -- restore ---------------------------------------------------------------------

    def stage(self, ctx: LoadContext) -> StagedLoad | None:
        """One whole database of plain tables: into a scratch schema, swapped by RENAME TABLE.

        Not for ``only_tables``, ``clean = false``, several databases, or a
        database with views, routines, events or triggers (they cannot move
        with RENAME TABLE): those load in place (see :mod:`.mytables`).
        """
        restored = self._restored()
        if len(restored) != 1 or self.only_tables or not self.clean:
            return ctx.cannot_stage(
                "only_tables and clean = false merge into the live database"
                if self.only_tables or not self.clean
                else "it restores several databases"
            )
        target = self.restore_database or restored[0]
        if "'" in target or self._unmovable(target):
            return ctx.cannot_stage(_UNMOVABLE.format(db=target))
        suffix = _secrets.token_hex(4)
        scratch, old = f"{target[:40]}_cvnew_{suffix}", f"{target[:40]}_cvold_{suffix}"
        side = self.with_options({"restore_database": scratch})
        assert isinstance(side, MysqlDumper)
        swap = TableSwap(
            self.name,
            f"database {target} on {self.socket or self.host or 'localhost'}",
            scratch,
            sql=self.run_sql,
            db=target,
            old=old,
        )
        ctx.side_created(swap)  # journalled before it exists: a kill after CREATE leaves it named
        try:
            self.run_sql(f"CREATE DATABASE {ident(scratch)};")
        except LoadError as exc:
            # A user without CREATE on other databases loads in place, as before.
            log.info("dump.not_staged", dumper=self.name, reason=exc.message)
            return ctx.cannot_stage(f"the user may not create the scratch database {scratch}")
        try:
            self._load_users(ctx)
            side.load(ctx)
            if self._unmovable(scratch):
                swap.discard()
                return ctx.cannot_stage(_UNMOVABLE.format(db="the dump"))
            swap.count()
        except BaseException:
            swap.discard()
            raise
        return swap

    def resume(self, state: Mapping[str, Any]) -> StagedLoad | None:
        """A scratch schema a killed restore left, with the live and the old database's names."""
        names = [state.get(k) for k in ("side", "old", "db")]
        if not all(isinstance(n, str) and n for n in names):
            return None
        side, old, db = (str(n) for n in names)
        tables = state.get("tables")
        return TableSwap(
            self.name,
            str(state.get("what")),
            side,
            sql=self.run_sql,
            db=db,
            old=old,
            staged_tables=tables if isinstance(tables, int) else 0,
        )

    def _unmovable(self, db: str) -> bool:
        return self.run_sql(MOVABLE_SQL.format(db=db)).strip() not in ("", "0")

    def run_sql(self, sql: str) -> str:
        """Run *sql* on the restore server; its output (batch, no column names)."""
        with self._connection() as (conn, secrets):
            result = run_tool(
                [self.client_program, *conn, "--batch", "--skip-column-names", "-e", sql],
                what=f"dumper {self.name}: {self.client_program}",
                error=LoadError,
                secrets=secrets,
                timeout=self.timeout,
            )
        return result.stdout.decode()

    def load(self, ctx: LoadContext) -> None:
        dumped = list(self.databases)
        tables: list[tuple[str, str]] = []
        for spec in self.only_tables:
            db, dot, table = spec.rpartition(".")
            if not dot:
                if len(dumped) != 1:
                    raise LoadError(
                        f"{ctx.where}: table {spec!r} needs its database (db.table): "
                        f"the dump holds {', '.join(dumped)}"
                    )
                db = dumped[0]
            tables.append((db, table))
        databases = self._restored()
        unknown = [db for db in databases if db not in dumped]
        if unknown:
            raise LoadError(
                f"{ctx.where}: the dump does not hold database {unknown[0]}",
                hint=f"it holds: {', '.join(dumped)}",
            )
        rename = {databases[0]: self.restore_database} if self.restore_database else {}
        if not rename:  # grants name the databases as dumped
            self._load_users(ctx)
        seen: set[tuple[str, str]] = set()
        with ctx.open(FILENAME) as raw:
            lines = filter_dump(
                raw,
                databases=set(databases),
                tables=set(tables) or None,
                clean=self.clean,
                rename=rename,
                seen=seen,
            )
            with self._connection() as (conn, secrets):
                argv = [
                    self.client_program,
                    *conn,
                    "--batch",
                    "--default-character-set=utf8mb4",
                    *self.restore_args,
                ]
                ctx.run(
                    argv,
                    stdin=lines,
                    secrets=secrets,
                    stdout="discard",
                    hint="statements before the failing one were applied (MySQL commits DDL "
                    "at once); restore the safety backup to go back",
                )
        missing = sorted(set(tables) - seen)
        if missing:
            raise LoadError(
                f"{ctx.where}: the dump has no table {missing[0][0]}.{missing[0][1]}",
                hint="the other tables named were loaded",
            )


# -- filtering a dump ------------------------------------------------------------------

_MARKER = re.compile(
    rb"^-- (?P<what>Current Database: |Table structure for table |Dumping data for table "
    rb"|Temporary table structure for view |Final view structure for view "
    rb"|Dumping events for database |Dumping routines for database )"
    rb"(?P<q>[`'])(?P<name>.*)(?P=q)\s*$"
)
_SETTINGS = re.compile(rb"^/\*!\d+ SET .*@OLD_")


def _ident(name: bytes) -> bytes:
    return b"`" + name.replace(b"`", b"``") + b"`"


def filter_dump(
    raw: IO[bytes] | Iterable[bytes],
    *,
    databases: set[str],
    tables: set[tuple[str, str]] | None = None,
    clean: bool = True,
    rename: dict[str, str] | None = None,
    seen: set[tuple[str, str]] | None = None,
) -> Iterator[bytes]:
    """The lines of a mysqldump ``--databases`` dump that restore *databases* (or *tables*).

    mysqldump marks each part with a comment (``-- Current Database:``,
    ``-- Table structure for table``...); INSERT statements are single lines
    (newlines in values are escaped), so the dump can be cut at those marks.
    The header and the session settings are always kept. *rename* maps a
    database to the name it is loaded under; *seen* collects the tables met.
    """
    rename = rename or {}
    db: str | None = None
    keep = True  # the header
    kind = b""
    for line in raw:
        match = _MARKER.match(line)
        if match:
            kind = match["what"]
            name = match["name"].decode("utf-8", "replace")
            if kind == b"Current Database: ":
                db = name.replace("``", "`")
                keep = db in databases
            elif kind in (b"Dumping events for database ", b"Dumping routines for database "):
                keep = db is not None and db in databases and tables is None
            else:
                table = name.replace("``", "`")
                keep = db is not None and db in databases
                if keep and tables is not None:
                    keep = (db, table) in tables
                if keep and seen is not None and db is not None:
                    seen.add((db, table))
        if keep:
            if kind == b"Current Database: " and db is not None:
                line = _database_line(line, db, tables is not None, clean, rename)
                if not line:
                    continue
            yield line
        elif _SETTINGS.match(line):
            yield line  # restore the session settings the header changed


def _database_line(
    line: bytes, db: str, tables: bool, clean: bool, rename: dict[str, str]
) -> bytes:
    """A line of a ``Current Database`` part, with the database renamed or its DROP left out."""
    if b"DROP DATABASE" in line and (tables or not clean):
        return b""
    if db in rename and (b"DATABASE" in line or line.startswith(b"USE ")):
        old, new = _ident(db.encode()), _ident(rename[db].encode())
        return line.replace(old, new)
    return line


@hookimpl
def cellvault_make_dumper(spec: DumperSpec) -> Dumper | None:
    return MysqlDumper.from_spec(spec) if spec.type == "mysql" else None
