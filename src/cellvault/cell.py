"""Cells: the independent units of the platform that are backed up on their own."""

from __future__ import annotations

import errno
import fnmatch
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from .errors import BackupError, ConfigError
from .layout import RESERVED_NAMES
from .specs import check_cell_dumpers, to_dumpers

__all__ = [
    "Cell",
    "excluder",
    "existing_roots",
    "is_cell_name",
    "is_excluded",
    "validate_cell_name",
]

CELL_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def is_cell_name(name: str) -> bool:
    """Whether *name* is a valid, unreserved cell name (see :func:`validate_cell_name`)."""
    try:
        validate_cell_name(name)
    except ConfigError:
        return False
    return True


def validate_cell_name(name: str) -> str:
    """Return *name* if it is a valid cell name, else raise :class:`ConfigError`."""
    if not isinstance(name, str) or not CELL_NAME.fullmatch(name) or len(name) > 64:
        raise ConfigError(
            f"invalid cell name {name!r}",
            hint="a cell name is 1-64 characters of a-z, 0-9, '_' and '-', "
            "starting with a letter or digit",
        )
    if name in RESERVED_NAMES:
        raise ConfigError(f"cell name {name!r} is reserved", hint="choose another name")
    return name


def _check_name(_: object, attribute: attrs.Attribute[str], value: str) -> None:
    validate_cell_name(value)


def _to_paths(value: Iterable[str | Path]) -> tuple[Path, ...]:
    if isinstance(value, str | Path):
        value = [value]
    return tuple(Path(p).expanduser() for p in value)


def _to_patterns(value: str | Iterable[str]) -> tuple[str, ...]:
    # One pattern given as a string is one pattern, not one per character.
    return (value,) if isinstance(value, str) else tuple(value)


def _check_dumpers(cell: Cell, attribute: attrs.Attribute[tuple[Any, ...]], value: Any) -> None:
    check_cell_dumpers(cell, attribute, value)


def resolve_cell_path(cell: str, path: Path) -> Path:
    """The data a cell path stands for: itself, or what it links to when it is a symlink.

    ``/srv/cells/crm -> /data/crm`` is a common layout: the cell is backed up
    as ``/data/crm``'s data (and restored into it, the link left as it is). A
    link cycle, or a link to ``/``, is a configuration error.
    """
    if not path.is_symlink():
        return path
    try:
        resolved = path.resolve(strict=False)
    except (RuntimeError, OSError) as exc:  # RuntimeError: a cycle, before Python 3.13
        raise ConfigError(
            f"cell {cell}: path {path} is a symbolic link that cannot be resolved ({exc})",
            hint="fix the link (a cycle?) or give the cell the path of its data",
        ) from None
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"cell {cell}: path {path} is a symbolic link in a cycle",
                hint="fix the link or give the cell the path of its data",
            ) from None
    if resolved == Path("/"):
        raise ConfigError(
            f"cell {cell}: path {path} is a symbolic link to '/'",
            hint="a cell cannot back up the whole file system; give the path of its data",
        )
    return resolved


def _check_paths(
    cell: Cell, attribute: attrs.Attribute[tuple[Path, ...]], value: tuple[Path, ...]
) -> None:
    if not value:
        raise ConfigError(
            f"cell {cell.name}: no paths configured", hint="give the cell's data paths"
        )
    seen: dict[str, Path] = {}
    for path in value:
        if not path.is_absolute():
            raise ConfigError(
                f"cell {cell.name}: path {str(path)!r} is not absolute",
                hint="give absolute paths so a restore knows where the data belongs",
            )
        root = path.name
        if not root:
            raise ConfigError(f"cell {cell.name}: cannot back up the file system root '/'")
        resolve_cell_path(cell.name, path)
        if root in seen:
            raise ConfigError(
                f"cell {cell.name}: paths {seen[root]} and {path} have the same name {root!r}",
                hint="each path of a cell is kept under its last name; rename or split the cell",
            )
        seen[root] = path


@attrs.frozen
class Cell:
    """A named unit of the platform: its data paths, what to leave out, its dumpers.

    Each path is kept in the archive under ``data/<last name of the path>/``,
    so the names of one cell's paths must differ. *exclude* holds glob patterns:
    one without a ``/`` matches a name at any depth (``*.tmp``, ``cache``), one
    with a ``/`` matches a path relative to the cell path (``logs/*.gz``).
    """

    name: str = attrs.field(validator=_check_name)
    paths: tuple[Path, ...] = attrs.field(converter=_to_paths, validator=_check_paths)
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_to_patterns)
    #: Dumpers run at backup time, after the files: :class:`~cellvault.dumpers.Dumper`
    #: objects, :class:`~cellvault.dumpers.DumperSpec`, or tables such as
    #: ``{"type": "postgres", "dsn": "..."}``; see ``docs/dumpers.md``.
    dumpers: tuple[Any, ...] = attrs.field(
        default=(), converter=to_dumpers, validator=_check_dumpers
    )

    @property
    def roots(self) -> dict[str, Path]:
        """Map each archive root name (``data/<root>``) to the path it comes from."""
        return {p.name: p for p in self.paths}

    def excludes(self, relpath: PurePosixPath) -> bool:
        """Tell whether *relpath* (relative to one of the cell's paths) is excluded."""
        return is_excluded(relpath, self.exclude)


def is_excluded(relpath: PurePosixPath, patterns: Sequence[str]) -> bool:
    """Match *relpath* against gitignore-like glob *patterns*."""
    text = relpath.as_posix()
    for pattern in patterns:
        pat = pattern.rstrip("/")
        if "/" in pat:
            if fnmatch.fnmatchcase(text, pat.lstrip("/")):
                return True
        elif fnmatch.fnmatchcase(relpath.name, pat):
            return True
    return False


def excluder(cell: Cell) -> Callable[[str, str], bool] | None:
    """``cell.excludes`` for a relative path given as text and its last name.

    None when the cell excludes nothing (the walk then skips the test).

    The same rules as :func:`is_excluded` (a pattern with a ``/``
    matches the path relative to the cell path, one without matches any name),
    compiled once into two regular expressions instead of a PurePosixPath and
    an fnmatch per pattern for every path.
    """
    if type(cell).excludes is not Cell.excludes:  # a subclass with its own rules
        return lambda rel, name: cell.excludes(PurePosixPath(rel))
    if not cell.exclude:
        return None
    by_path: list[str] = []
    by_name: list[str] = []
    for pattern in cell.exclude:
        pat = pattern.rstrip("/")
        if "/" in pat:
            by_path.append(fnmatch.translate(pat.lstrip("/")))
        else:
            by_name.append(fnmatch.translate(pat))
    path_match = re.compile("|".join(by_path)).match if by_path else None
    name_match = re.compile("|".join(by_name)).match if by_name else None

    def excludes(rel: str, name: str) -> bool:
        return bool(
            (name_match is not None and name_match(name))
            or (path_match is not None and path_match(rel))
        )

    return excludes


def existing_roots(
    cell: Cell, *, keep_going: bool = False, warn: Callable[[str], None] | None = None
) -> dict[str, Path]:
    """*cell*'s paths by archive root name, each checked to exist, links resolved.

    A missing path is a :class:`~cellvault.errors.BackupError`, unless
    *keep_going* (the safety backup before a restore keeps what is there: a
    path that was lost is what the restore is about to bring back), then it
    is left out and *warn* is told. A cell path that is a link
    (``/srv/cells/crm -> /data/crm``) is the data it points to
    (:func:`resolve_cell_path`).
    """
    roots: dict[str, Path] = {}
    for name, path in cell.roots.items():
        try:
            os.lstat(path)
        except FileNotFoundError:
            if keep_going:
                if warn is not None:
                    warn(f"{path} does not exist; the safety backup holds the other paths")
                continue
            raise BackupError(
                f"cell {cell.name}: path {path} does not exist",
                hint="create it, fix the cell's paths, or remove the cell from BACKUP_CELLS",
            ) from None
        except OSError as exc:
            raise BackupError(f"cell {cell.name}: cannot read {path}: {exc.strerror}") from None
        roots[name] = resolve_cell_path(cell.name, path)
    return roots
