"""cellvault-sqlitesql: the ``sqlite-sql`` dumper, a SQLite database as SQL text.

A third-party cellvault plugin: this module is named in the ``cellvault``
entry-point group of its ``pyproject.toml``; cellvault registers it and asks
its ``cellvault_make_dumper`` hook for every dumper a cell configures.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import attrs

from cellvault import hookimpl
from cellvault.dumpers import DumpContext, Dumper, DumpError, DumperSpec, LoadContext, LoadError

__all__ = ["SqliteSqlDumper"]


@attrs.define(kw_only=True)
class SqliteSqlDumper(Dumper):
    """A SQLite database, dumped as the SQL script that rebuilds it."""

    type: ClassVar[str] = "sqlite-sql"

    #: The database file. Options are attrs fields; converters accept the
    #: strings environment variables give.
    path: Path = attrs.field(converter=Path)
    #: Seconds to wait for a writer's lock.
    busy_timeout: float = attrs.field(default=30.0, converter=float)

    @property
    def script(self) -> str:
        return f"{self.path.stem}.sql"

    def dump(self, ctx: DumpContext) -> None:
        uri = f"file:{urllib.parse.quote(str(self.path))}?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout)
        except sqlite3.Error as exc:
            raise DumpError(f"{ctx.where}: cannot open {self.path}: {exc}") from None
        try:
            # One read transaction for the whole dump: a consistent snapshot.
            db.execute("BEGIN")
            with ctx.open(self.script) as out:  # streamed into the archive as it is written
                for statement in db.iterdump():
                    out.write(statement.encode() + b"\n")
            ctx.info["sqlite"] = sqlite3.sqlite_version
        except sqlite3.Error as exc:
            raise DumpError(f"{ctx.where}: dumping {self.path} failed: {exc}") from None
        finally:
            db.close()

    def load(self, ctx: LoadContext) -> None:
        # Inside the cell: rebuild the staged copy, which the swap puts in place.
        dest = ctx.staged(self.path) or self.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.sqlitesql")
        tmp.unlink(missing_ok=True)
        try:
            with contextlib.closing(sqlite3.connect(tmp, isolation_level=None)) as db:
                statement = ""
                with ctx.open(self.script) as script:
                    for raw in script:
                        statement += raw.decode()
                        if sqlite3.complete_statement(statement):
                            db.execute(statement)
                            statement = ""
            for suffix in ("-wal", "-shm", "-journal"):
                Path(f"{dest}{suffix}").unlink(missing_ok=True)
            os.replace(tmp, dest)
        except sqlite3.Error as exc:
            tmp.unlink(missing_ok=True)
            raise LoadError(f"{ctx.where}: rebuilding {dest} failed: {exc}") from None

    def stock_restore(self, files: Sequence[str]) -> str | None:
        return f"sqlite3 {self.path} < {self.script}"


@hookimpl
def cellvault_make_dumper(spec: DumperSpec) -> Dumper | None:
    """Build the dumper for specs of type ``sqlite-sql``; leave the others to other plugins."""
    if spec.type != SqliteSqlDumper.type:
        return None
    return SqliteSqlDumper.from_spec(spec)  # unknown options become a ConfigError naming them
