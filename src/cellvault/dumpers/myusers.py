"""The MariaDB/MySQL users a cell's databases need, and their grants on them (``users = true``).

At backup, the users holding any privilege on one of the dumped databases
(``information_schema`` ``SCHEMA_PRIVILEGES``, ``TABLE_PRIVILEGES``,
``COLUMN_PRIVILEGES`` and ``mysql.procs_priv``) are found; for each,
``SHOW CREATE USER`` (with its password hash, so that the application can log
in to a standby server) and the ``SHOW GRANTS`` lines that name one of those
databases are stored as ``users.sql``. Global privileges (``ON *.*``) and
grants on other databases are left out: they are not the cell's.

At restore, before the dump itself, each user is created if missing
(``CREATE USER IF NOT EXISTS``: an existing user keeps its password) and the
stored grants are given (``GRANT`` only adds privileges).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["USERS_FILE", "grantees_sql", "users_sql"]

USERS_FILE = "users.sql"


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


#: The grantees with a privilege on the databases ``{names}`` (quoted literals).
_GRANTEES = (
    "SELECT GRANTEE FROM information_schema.SCHEMA_PRIVILEGES WHERE TABLE_SCHEMA IN ({names})"
    " UNION SELECT GRANTEE FROM information_schema.TABLE_PRIVILEGES"
    " WHERE TABLE_SCHEMA IN ({names})"
    " UNION SELECT GRANTEE FROM information_schema.COLUMN_PRIVILEGES"
    " WHERE TABLE_SCHEMA IN ({names})"
    " UNION SELECT CONCAT('''', REPLACE(User, '''', ''''''), '''@''', Host, '''')"
    " FROM mysql.procs_priv WHERE Db IN ({names}) ORDER BY 1;"
)


def grantees_sql(databases: Iterable[str]) -> str:
    """A query listing (one per line) the grantees with a privilege on *databases*."""
    return _GRANTEES.format(names=", ".join(_literal(db) for db in databases))


def _on_databases(databases: Iterable[str]) -> re.Pattern[str]:
    quoted = "|".join(re.escape("`" + db.replace("`", "``") + "`") for db in databases)
    return re.compile(
        rf"^GRANT .+ ON (?:PROCEDURE |FUNCTION |PACKAGE |PACKAGE BODY )?(?:{quoted})\."
    )


def users_sql(create: str, grants: Iterable[str], databases: Iterable[str]) -> str:
    """The statements that bring one user back: created if missing, its grants on *databases*."""
    create = create.strip()
    if not create.startswith("CREATE USER "):
        raise ValueError(f"unexpected SHOW CREATE USER output: {create[:40]!r}")
    lines = ["CREATE USER IF NOT EXISTS " + create.removeprefix("CREATE USER ") + ";"]
    on = _on_databases(list(databases))
    lines += [g.strip() + ";" for g in grants if on.match(g.strip())]
    return "\n".join(lines) + "\n"
