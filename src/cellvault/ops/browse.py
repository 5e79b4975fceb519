"""Browsing the history of a cell: ``ls``, ``find`` and ``diff`` over manifests.

Every archive's manifest lists the whole tree of its point in time (an
incremental's unchanged files name the older archive that holds them), and a
compressed copy of it is stored beside the archive. These functions read
those copies only: no archive data is ever downloaded, so they stay fast on
cells of hundreds of thousands of files (docs/performance.md).

Paths are shown relative to the cell, starting with the root's name:
``crm/config/app.yml`` is ``config/app.yml`` under the cell's root ``crm``
(the archive's member ``data/crm/config/app.yml``). A pattern with a ``/``
is matched against that whole path (``*`` also crosses ``/``); one without
is matched against the last component only, like ``find -name``. Database
dumps (``dumps/``) are not part of the browsed tree.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import io
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import zstandard

from ..archive import ArchiveId, Selector, Sidecar
from ..config import Config
from ..crypt import open_small
from ..errors import ArchiveCorrupt, ArchiveNotFound, ConfigError, TargetError
from ..log import get_logger
from ..manifest import ENTRY_TYPES, ManifestText
from ..spillmap import SpillMap
from ..targets.base import Target
from .plan import RestorePlan, choose_archive, plan_restore
from .resources import Resources

__all__ = [
    "DiffEntry",
    "DiffReport",
    "Found",
    "PathMatcher",
    "Point",
    "TreeEntry",
    "cell_path",
    "choose_point",
    "diff",
    "find",
    "iter_rows",
    "list_tree",
    "member_path",
    "open_point",
    "points_of",
    "read_rows",
]

log = get_logger(__name__)

#: Where the cell's files live inside an archive.
DATA = "data/"
#: A stand-in destination: planning a point to browse never writes anywhere.
_NOWHERE = Path("/nonexistent-cellvault-browse")


def cell_path(member: str) -> str | None:
    """The cell-relative path of an archive member (``data/crm/a`` -> ``crm/a``); ``None`` for dumps."""
    return member[len(DATA) :] if member.startswith(DATA) else None


def member_path(path: str) -> str:
    """The archive member of a cell-relative path (``crm/a`` -> ``data/crm/a``)."""
    return DATA + path.strip("/")


def _when(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="seconds")


@attrs.frozen
class Point:
    """One point in time of a cell: its archive, where it was read and when it was taken."""

    archive: str
    backed_at: str
    kind: str
    target: str

    @classmethod
    def of(cls, sidecar: Sidecar, target: str) -> Point:
        return cls(str(sidecar.id), sidecar.meta.to_dict()["backed_at"], sidecar.meta.kind, target)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class TreeEntry:
    """One path of a point, as ``ls`` shows it."""

    path: str
    type: str
    size: int
    mode: int
    #: UTC, ISO 8601, to the second.
    mtime: str
    uid: int
    gid: int
    mtime_ns: int = 0
    #: The link's target, for symbolic links.
    target: str | None = None
    #: The archive that holds the file's bytes (files only).
    archive: str | None = None
    sha256: str | None = None

    @classmethod
    def of(cls, row: Row) -> TreeEntry:
        """The entry of one manifest row (a member under ``data/``)."""
        path = cell_path(row["path"])
        assert path is not None
        kind = row["type"]
        mtime_ns = int(row["mtime_ns"])
        return cls(
            path=path,
            type=kind,
            size=int(row.get("size", 0)),
            mode=int(row["mode"]),
            mtime=_when(mtime_ns),
            uid=int(row.get("uid", 0)),
            gid=int(row.get("gid", 0)),
            mtime_ns=mtime_ns,
            target=row.get("target"),
            archive=row.get("archive") if kind == "file" else None,
            sha256=row.get("sha256") if kind == "file" else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


#: One manifest entry as parsed JSON (browsing builds no :class:`~cellvault.manifest.Entry`).
Row = dict[str, Any]


def iter_rows(target: Target, sidecar: Sidecar) -> Iterator[tuple[str, Row]]:
    """The stored manifest copy of *sidecar* as plain rows with their member paths, in order.

    Parsed by the JSON decoder alone (several times faster than building a
    :class:`~cellvault.manifest.Manifest`) as a stream: memory does not grow
    with the number of paths. For reading, never for restoring.
    """
    with target.guard(f"read manifest of {sidecar.id}"):
        f = target.retrying(target.open_read, target.manifest_key(sidecar.id))
    with f:
        if sidecar.encryption is not None:
            # A sealed copy is opened whole (the compressed manifest: a small
            # fraction of the archive), then read as a stream like a plain one.
            with target.guard(f"read manifest of {sidecar.id}"):
                f = io.BytesIO(open_small(f.read(), sidecar))
        try:
            reader = zstandard.ZstdDecompressor().stream_reader(f)
            for row in ManifestText(reader).items():
                path = row["path"]
                if type(path) is not str or row["type"] not in ENTRY_TYPES:
                    raise TypeError("an entry's path or type is malformed")
                yield path, row
        except (KeyError, TypeError, ValueError, zstandard.ZstdError) as exc:
            raise ArchiveCorrupt(
                f"manifest copy is unusable ({type(exc).__name__}: {exc})",
                archive=str(sidecar.id),
                target=target.name,
                member="manifest.json",
            ) from None


def _row_text(row: Row) -> str:
    return json.dumps(row, separators=(",", ":"))


def read_rows(target: Target, sidecar: Sidecar) -> SpillMap[Row]:
    """The rows of :func:`iter_rows` by member path, in manifest order.

    A :class:`~cellvault.spillmap.SpillMap`: a large manifest's rows are kept
    in a temporary file, not in memory.
    """
    rows: SpillMap[Row] = SpillMap(_row_text, json.loads)
    for path, row in iter_rows(target, sidecar):
        rows[path] = row
    return rows


def choose_point(
    res: Resources, cell: str, select: str | Selector, source: Sequence[str] | None = None
) -> tuple[Target, Sidecar]:
    """The archive *select* picks, as a restore picks it, and the first target holding it."""
    selector = select if isinstance(select, Selector) else Selector.parse(select)
    sources = res.chosen(source)
    ident = choose_archive(cell, selector, sources, res.fence.current())
    for target in sources:
        try:
            if ident in target.archive_ids(cell):
                return target, target.sidecar(ident)
        except TargetError:
            continue
    raise ArchiveNotFound(f"archive {ident} is no longer on any target")


class PathMatcher:
    """Glob patterns over cell-relative paths (see the module's docstring).

    A pattern also accepts the archive's own spelling (``data/crm/...``) and,
    for a configured cell, a live absolute path under one of its roots
    (``/srv/crm/config/app.yml``).
    """

    def __init__(self, patterns: Sequence[str], roots: dict[str, Path] | None = None) -> None:
        if not patterns or any(not p.strip() for p in patterns):
            raise ConfigError(
                "a path pattern is empty", hint="give a glob such as crm/config/*.yml"
            )
        self.patterns = [self._relative(p.strip(), roots or {}) for p in patterns]
        self._full = [re.compile(fnmatch.translate(p)) for p in self.patterns if "/" in p]
        self._name = [re.compile(fnmatch.translate(p)) for p in self.patterns if "/" not in p]

    @staticmethod
    def _relative(pattern: str, roots: dict[str, Path]) -> str:
        if pattern.startswith("/"):
            for name, root in roots.items():
                try:
                    rest = PurePosixPath(pattern).relative_to(root.as_posix())
                except ValueError:
                    continue
                return name if str(rest) == "." else f"{name}/{rest}"
            known = ", ".join(str(r) for r in roots.values()) or "none (not configured)"
            raise ConfigError(
                f"path {pattern} lies under none of the cell's roots",
                hint=f"the cell's roots: {known}; or give a path relative to the cell, like crm/a.txt",
            )
        return pattern.removeprefix(DATA).rstrip("/") or "*"

    def matches(self, path: str) -> bool:
        """Whether the cell-relative *path* matches one of the patterns."""
        if any(r.fullmatch(path) for r in self._full):
            return True
        name = path.rpartition("/")[2]
        return any(r.fullmatch(name) for r in self._name)

    def __str__(self) -> str:
        return " ".join(self.patterns)


def open_point(
    config: Config,
    res: Resources,
    cell: str,
    select: str | Selector,
    source: Sequence[str] | None = None,
    into: Path | None = None,
) -> RestorePlan:
    """The point *select* picks of *cell*: its archive, manifest and chain (reads no data).

    Chosen exactly as a restore chooses (fenced archives and pre-restore
    safety backups passed over unless named by id), from the first of the
    *source* targets (default: all) holding its whole chain.
    """
    selector = select if isinstance(select, Selector) else Selector.parse(select)
    return plan_restore(
        config,
        cell,
        selector,
        res.chosen(source),
        into or _NOWHERE,
        epoch=res.fence.current(),
    )


def list_tree(
    config: Config,
    res: Resources,
    cell: str,
    select: str | Selector = "latest",
    path: str | None = None,
    source: Sequence[str] | None = None,
) -> tuple[Point, Iterator[TreeEntry]]:
    """The point of :meth:`cellvault.Vault.ls` (see there) and its entries, in manifest order."""
    target, sidecar = choose_point(res, cell, select, source)
    point = Point.of(sidecar, target.name)
    prefix = None if path is None else PathMatcher([path], config_roots(config, cell)).patterns[0]
    under: str | None = None
    if prefix is not None and prefix != "*":
        under = member_path(prefix)
        if not any(name == under for name, _ in iter_rows(target, sidecar)):
            raise ArchiveNotFound(
                f"archive {point.archive} of cell {cell} holds no path {prefix}",
                hint=f"search the history with: cellvault find {cell} '{prefix.rpartition('/')[2]}'",
            )

    def entries() -> Iterator[TreeEntry]:
        inside = None if under is None else under + "/"
        for name, row in iter_rows(target, sidecar):
            if not name.startswith(DATA):
                continue
            if inside is not None and name != under and not name.startswith(inside):
                continue
            yield TreeEntry.of(row)

    return point, entries()


def config_roots(config: Config, cell: str) -> dict[str, Path]:
    """The roots of *cell* when it is configured (name -> live path), else none."""
    for c in config.cells:
        if c.name == cell:
            return dict(c.roots)
    return {}


@attrs.frozen
class Found:
    """A path matching a ``find`` pattern, at one point."""

    archive: str
    backed_at: str
    path: str
    type: str
    size: int
    mtime: str
    sha256: str | None
    target: str

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def find(
    config: Config,
    res: Resources,
    cell: str,
    patterns: Sequence[str],
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    source: Sequence[str] | None = None,
) -> Iterator[Found]:
    """The matches of :meth:`cellvault.Vault.find` (see there), newest point first.

    One manifest is held at a time; matches are yielded as each is read.
    """
    matcher = PathMatcher(patterns, config_roots(config, cell))
    points = points_of(res, cell, source)
    if not points:
        raise ArchiveNotFound(
            f"no archive of cell {cell} on any target",
            hint="check the cell name and BACKUP_TARGETS ('cellvault list')",
        )
    for ident in sorted(points, reverse=True):
        if (since is not None and ident.when < since) or (until is not None and ident.when > until):
            continue
        target, sidecar = points[ident]
        backed_at = sidecar.meta.to_dict()["backed_at"]
        for name, row in iter_rows(target, sidecar):
            path = cell_path(name)
            if path is not None and matcher.matches(path):
                yield Found(
                    str(ident),
                    backed_at,
                    path,
                    row["type"],
                    int(row.get("size", 0)),
                    _when(int(row["mtime_ns"])),
                    row.get("sha256"),
                    target.name,
                )


def points_of(res: Resources, cell: str, source: Sequence[str] | None) -> dict[ArchiveId, Any]:
    """Every committed archive of *cell*: id -> (first target holding it, its sidecar)."""
    found: dict[ArchiveId, Any] = {}
    errors: list[TargetError] = []
    targets = res.chosen(source)
    for target in targets:
        try:
            sidecars = target.archives(cell)
        except TargetError as exc:
            log.warning("find.target_unreadable", target=target.name, cell=cell, error=str(exc))
            errors.append(exc)
            continue
        for sidecar in sidecars:
            found.setdefault(sidecar.id, (target, sidecar))
    if errors and len(errors) == len(targets):
        raise errors[0]
    return found


@attrs.frozen
class DiffEntry:
    """One path that differs between two points."""

    path: str
    #: ``added``, ``removed`` or ``modified``.
    status: str
    #: For ``modified``: what changed (``type``, ``content``, ``mode``, ``owner``, ``target``, ``mtime``).
    changes: tuple[str, ...]
    type: str
    size_before: int
    size_after: int

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class DiffReport:
    """What changed from point :attr:`a` to point :attr:`b`."""

    a: Point
    b: Point
    entries: tuple[DiffEntry, ...]

    def count(self, status: str) -> int:
        return sum(1 for e in self.entries if e.status == status)

    @property
    def added_bytes(self) -> int:
        return sum(e.size_after for e in self.entries if e.status == "added")

    @property
    def removed_bytes(self) -> int:
        return sum(e.size_before for e in self.entries if e.status == "removed")

    @property
    def modified_bytes(self) -> int:
        """The bytes of the modified files' new contents."""
        return sum(e.size_after for e in self.entries if "content" in e.changes)

    def totals(self) -> dict[str, int]:
        return {
            "added": self.count("added"),
            "removed": self.count("removed"),
            "modified": self.count("modified"),
            "added_bytes": self.added_bytes,
            "removed_bytes": self.removed_bytes,
            "modified_bytes": self.modified_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "a": self.a.to_dict(),
            "b": self.b.to_dict(),
            "totals": self.totals(),
            "entries": [e.to_dict() for e in self.entries],
        }


def diff(
    config: Config,
    res: Resources,
    cell: str,
    a: str | Selector,
    b: str | Selector = "latest",
    source: Sequence[str] | None = None,
) -> DiffReport:
    """The report of :meth:`cellvault.Vault.diff` (see there)."""
    old_target, old_sidecar = choose_point(res, cell, a, source)
    new_target, new_sidecar = choose_point(res, cell, b, source)
    old = read_rows(old_target, old_sidecar)
    new = read_rows(new_target, new_sidecar)
    entries: list[DiffEntry] = []
    for name, row in old.items():
        path = cell_path(name)
        if path is None:
            continue
        after = new.get(name)
        size = int(row.get("size", 0))
        if after is None:
            entries.append(DiffEntry(path, "removed", (), row["type"], size, 0))
            continue
        if after == row:
            continue
        changes = changed(row, after)
        if changes:
            entries.append(
                DiffEntry(path, "modified", changes, after["type"], size, int(after.get("size", 0)))
            )
    for name, row in new.items():
        path = cell_path(name)
        if path is not None and name not in old:
            entries.append(DiffEntry(path, "added", (), row["type"], 0, int(row.get("size", 0))))
    entries.sort(key=lambda e: e.path)
    return DiffReport(
        Point.of(old_sidecar, old_target.name),
        Point.of(new_sidecar, new_target.name),
        tuple(entries),
    )


def changed(before: Row, after: Row) -> tuple[str, ...]:
    """What differs between two manifest rows of one path (a directory's mtime is not compared)."""
    kind = before["type"]
    if kind != after["type"]:
        return ("type",)
    get, got = before.get, after.get
    out: list[str] = []
    if kind == "file" and (get("sha256"), get("size")) != (got("sha256"), got("size")):
        out.append("content")
    if get("mode") != got("mode"):
        out.append("mode")
    if (get("uid"), get("gid")) != (got("uid"), got("gid")):
        out.append("owner")
    if kind == "symlink" and get("target") != got("target"):
        out.append("target")
    if kind != "dir" and get("mtime_ns") != got("mtime_ns"):
        out.append("mtime")
    return tuple(out)
