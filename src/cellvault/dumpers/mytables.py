"""MariaDB/MySQL staged loads: a scratch schema, swapped in by one multi-table ``RENAME TABLE``.

The dump of the cell's (one) database is loaded under a scratch name
(``<db>_cvnew_<hex>``). At the swap, one ``RENAME TABLE`` statement moves
every live table to ``<db>_cvold_<hex>`` and every scratch table into the
live database: atomic for the server's other sessions. An unswap is the
reverse statement. Views, routines, events and triggers cannot move between
databases with ``RENAME TABLE``: a database that has any (live or in the
dump) is not staged, and the dumper loads it in place, saying so.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..errors import LoadError
from ..log import get_logger
from .staging import StagedLoad

__all__ = ["MOVABLE_SQL", "TableSwap", "ident", "rename_sql"]

log = get_logger(__name__)

#: How many objects of *db* RENAME TABLE cannot move (views, routines, events, triggers).
MOVABLE_SQL = """
SELECT (SELECT COUNT(*) FROM information_schema.views WHERE table_schema = '{db}')
     + (SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = '{db}')
     + (SELECT COUNT(*) FROM information_schema.events WHERE event_schema = '{db}')
     + (SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = '{db}');
"""


def ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def rename_sql(moves: list[tuple[str, str, str]]) -> str:
    """One ``RENAME TABLE`` for *moves* (table, from db, to db)."""
    pairs = ", ".join(f"{ident(a)}.{ident(t)} TO {ident(b)}.{ident(t)}" for t, a, b in moves)
    return f"RENAME TABLE {pairs};"


@attrs.define
class TableSwap(StagedLoad):
    """The tables of a scratch schema, exchanged with the live database's by ``RENAME TABLE``."""

    sql: Callable[[str], str] = attrs.field(kw_only=True)
    db: str = attrs.field(kw_only=True)
    old: str = attrs.field(kw_only=True)
    #: How many tables the scratch schema held once loaded.
    staged_tables: int = attrs.field(default=0, kw_only=True)

    def _tables(self, db: str) -> list[str]:
        query = (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = '{}' AND table_type = 'BASE TABLE';"
        )
        return [t for t in self.sql(query.format(db)).splitlines() if t]

    def count(self) -> None:
        """Note how many tables the scratch schema holds (once loaded)."""
        self.staged_tables = len(self._tables(self.side))

    def swap(self) -> None:
        self.sql(
            f"CREATE DATABASE IF NOT EXISTS {ident(self.db)}; "
            f"CREATE DATABASE IF NOT EXISTS {ident(self.old)};"
        )
        moves = [(t, self.db, self.old) for t in self._tables(self.db)]
        moves += [(t, self.side, self.db) for t in self._tables(self.side)]
        if moves:
            self.sql(rename_sql(moves))

    def swapped(self) -> bool:
        # The one RENAME TABLE empties the scratch schema (or, with nothing staged, the live one).
        if self.staged_tables:
            return not self._tables(self.side)
        return not self._tables(self.db)

    def unswap(self) -> None:
        moves = [(t, self.db, self.side) for t in self._tables(self.db)]
        moves += [(t, self.old, self.db) for t in self._tables(self.old)]
        if moves:
            self.sql(rename_sql(moves))
        self._drop(self.old)

    def discard(self) -> None:
        self._drop(self.side)

    def commit(self) -> None:
        self._drop(self.old)
        self._drop(self.side)

    def _drop(self, db: str) -> None:
        try:
            self.sql(f"DROP DATABASE IF EXISTS {ident(db)};")
        except LoadError as exc:
            log.warning("dump.cleanup_failed", database=db, error=str(exc))

    def state(self) -> dict[str, object]:
        return {**super().state(), "old": self.old, "db": self.db, "tables": self.staged_tables}
