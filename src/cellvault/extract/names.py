"""Archive member names and link targets, checked before anything is written.

The input is untrusted: absolute paths, ``..`` and empty components are
refused, and a symbolic link whose target resolves outside its cell root
(through the archive's other links too) is refused with
:class:`~cellvault.UnsafeArchive`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath

from ..errors import UnsafeArchive

__all__ = ["check_link", "checked_name", "safe_member_path"]


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


def check_link(
    entry_path: PurePosixPath,
    target: str,
    *,
    archive: str,
    allow_external: bool,
    links: Mapping[str, str] | None = None,
) -> None:
    """Refuse a link that resolves outside its cell root.

    The target is resolved below ``data/<root>/`` component by component;
    *links* (path -> target of the archive's other symbolic links) are
    followed on the way, so ``a -> d/up/..`` with ``d/up -> ..`` is caught too.
    """
    if allow_external:
        return

    def refuse(why: str) -> UnsafeArchive:
        return UnsafeArchive(
            f"symbolic link to {target!r} {why}; refused",
            archive=archive,
            member=entry_path.as_posix(),
            hint="restore with allow_external_links (--allow-external-links) "
            "if the archive is trusted",
        )

    if target.startswith("/"):
        raise refuse("points to an absolute path, outside the destination")
    links = links or {}
    # Resolve lexically below the cell root: data/<root>/...
    root_depth = 2
    base = list(entry_path.parts[:-1])
    todo = list(reversed(target.split("/")))
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if len(base) <= root_depth:
                raise refuse("points outside the destination")
            base.pop()
            continue
        base.append(part)
        via = links.get("/".join(base))
        if via is None:
            continue
        hops += 1
        if hops > 40:
            return  # a loop: the kernel refuses to resolve it (ELOOP), it leads nowhere
        if via.startswith("/"):
            through = "/".join(base)
            raise refuse(f"leads through the link {through} to an absolute path, outside")
        base.pop()
        todo.extend(reversed(via.split("/")))
