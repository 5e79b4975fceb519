"""Archive member names and link targets, checked before anything is written.

The input is untrusted: absolute paths, ``..`` and empty components are
refused with :class:`~cellvault.UnsafeArchive`. Link *targets* are data and
are not judged: extraction never writes through a link (see
:mod:`cellvault.extract.stage`).
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..errors import UnsafeArchive

__all__ = ["checked_name", "safe_member_path"]


def checked_name(name: str, archive: str) -> str:
    """Check an archive member name and return it without a trailing slash."""
    if not name or name[0] == "/" or "\0" in name:
        raise UnsafeArchive(
            f"member name {name!r} is absolute or empty; refused", archive=archive, member=name
        )
    norm = name.rstrip("/")
    parts = norm.split("/")
    if "" in parts or "." in parts or ".." in parts:
        raise UnsafeArchive(
            f"member name {name!r} has '..', '.' or empty components; refused",
            archive=archive,
            member=name,
        )
    return norm


def safe_member_path(name: str, *, archive: str) -> PurePosixPath:
    """Check an archive member name; raise :class:`UnsafeArchive` for a hostile one."""
    return PurePosixPath(*checked_name(name, archive).split("/"))
