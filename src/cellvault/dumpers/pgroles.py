"""PostgreSQL roles a database needs, dumped beside it (the ``roles`` option of the postgres dumper).

A database dump names its owners and grantees but does not create them: on
a fresh standby server, ``pg_restore`` then fails on ``ALTER ... OWNER TO``
and drops the grants. With ``roles = true`` the dumper also stores
``roles.sql``: the part of ``pg_dumpall --roles-only --no-role-passwords``
that concerns the roles the database uses (its owner, the owners of its
schemas and tables, every grantee of a privilege on them) and their
memberships among themselves. A restore runs it on the server first;
statements for roles that already exist fail harmlessly and are ignored.
Passwords are never stored: set them on the standby.
"""

from __future__ import annotations

import re

__all__ = ["RELEVANT_ROLES_SQL", "ROLES_FILE", "filter_roles"]

ROLES_FILE = "roles.sql"

#: The roles the current database uses (owners and grantees), one per line.
RELEVANT_ROLES_SQL = """
SELECT DISTINCT r.rolname FROM pg_roles r WHERE r.oid IN (
  SELECT datdba FROM pg_database WHERE datname = current_database()
  UNION SELECT nspowner FROM pg_namespace
  WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema'
  UNION SELECT c.relowner FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema'
  UNION SELECT (aclexplode(c.relacl)).grantee FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relacl IS NOT NULL AND n.nspname NOT LIKE 'pg\\_%'
  UNION SELECT (aclexplode(nspacl)).grantee FROM pg_namespace
  WHERE nspacl IS NOT NULL AND nspname NOT LIKE 'pg\\_%'
  UNION SELECT (aclexplode(datacl)).grantee FROM pg_database
  WHERE datname = current_database() AND datacl IS NOT NULL
);
"""

_ROLE_STMT = re.compile(r'^(?:CREATE|ALTER|COMMENT ON) ROLE ("(?:[^"]|"")+"|[^\s;]+)')
_GRANT = re.compile(r'^GRANT ("(?:[^"]|"")+"|[^\s;]+) TO ("(?:[^"]|"")+"|[^\s;]+)')


def _name(token: str) -> str:
    if token.startswith('"'):
        return token[1:-1].replace('""', '"')
    return token.lower()


def filter_roles(text: str, keep: set[str]) -> str:
    """The statements of a ``pg_dumpall --roles-only`` output that concern only roles in *keep*."""
    out = []
    for line in text.splitlines():
        role = _ROLE_STMT.match(line)
        if role and _name(role.group(1)) in keep:
            out.append(line)
            continue
        grant = _GRANT.match(line)
        if grant and {_name(grant.group(1)), _name(grant.group(2))} <= keep:
            out.append(line)
    return "\n".join(out) + ("\n" if out else "")
