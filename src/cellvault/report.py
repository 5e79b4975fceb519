"""What a run returns: reports per cell and per target, and failures.

Reports are values: the command line prints them (or their JSON), a service
that embeds cellvault reads them. ``ok`` tells whether everything succeeded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import attrs

from .archive import Kind

__all__ = [
    "BackupReport",
    "CellReport",
    "CellRestore",
    "DumpSummary",
    "Failure",
    "Report",
    "RestoreReport",
    "TargetOutcome",
    "VerifyReport",
    "VerifyResult",
]


def iso(when: dt.datetime) -> str:
    """*when* in UTC, ISO 8601 with a ``Z`` (how reports and records write times)."""
    return when.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def plain(value: Any) -> Any:
    """*value* as JSON-ready data: times in UTC with a ``Z``, reports with their ``ok``."""
    if isinstance(value, dt.datetime):
        return iso(value)
    if attrs.has(type(value)):
        names = [f.name for f in attrs.fields(type(value))]
        out = {name: plain(getattr(value, name)) for name in names}
        if "ok" not in names and isinstance(getattr(type(value), "ok", None), property):
            out["ok"] = value.ok
        return out
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return value


class Report:
    """The base of every report and record: an attrs value with one :meth:`to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the report (what ``--json`` prints), with its ``ok``."""
        out: dict[str, Any] = plain(self)
        out.setdefault("ok", getattr(self, "ok", True))
        return out


@attrs.frozen
class DumpSummary:
    """What one dumper did during a backup."""

    name: str
    type: str
    ok: bool
    bytes: int
    duration: float
    error: str | None = None


@attrs.frozen
class Failure:
    """One failure of a run, as alerts and logs carry it."""

    #: pack, upload, verify, prune, restore, lock, hook, ...
    stage: str
    error: str
    cell: str | None = None
    target: str | None = None
    archive: str | None = None
    run: str | None = None
    host: str | None = None
    operation: str = "backup"


@attrs.frozen
class TargetOutcome(Report):
    """How storing (and verifying) one archive on one target went."""

    target: str
    ok: bool
    stage: str | None = None
    error: str | None = None
    bytes_stored: int = 0
    duration: float = 0.0
    verified: bool = False


@attrs.frozen
class CellReport(Report):
    """The backup of one cell in a run."""

    cell: str
    ok: bool
    archive: str | None = None
    kind: Kind | None = None
    parent: str | None = None
    stage: str | None = None
    error: str | None = None
    files: int = 0
    bytes_read: int = 0
    bytes_total: int = 0
    archive_size: int = 0
    duration: float = 0.0
    targets: tuple[TargetOutcome, ...] = ()
    warnings: tuple[str, ...] = ()
    #: Why a requested incremental was made full, if it was.
    note: str | None = None
    #: What each of the cell's dumpers wrote (name, type, ok, bytes, duration).
    dumps: tuple[DumpSummary, ...] = ()


@attrs.frozen
class BackupReport(Report):
    """A backup run: every cell, every target."""

    run: str
    stamp: str
    cells: tuple[CellReport, ...]
    duration: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cells)

    def failures(self) -> list[CellReport]:
        return [c for c in self.cells if not c.ok]


@attrs.frozen
class VerifyResult(Report):
    """The verify of one archive on one target."""

    archive: str
    target: str
    ok: bool
    #: quick, full or drill.
    level: str = "full"
    error: str | None = None
    members: int = 0
    duration: float = 0.0
    #: What a quick verify compared: ``size``, and the store's checksums (``crc64ecma``, ``md5``).
    checks: tuple[str, ...] = ()
    #: Drill: files and bytes restored, and the measured restore time (seconds).
    files: int = 0
    bytes: int = 0
    rto: float | None = None
    #: Drill: per dumper, whether its dump was loaded into a scratch object (and dropped).
    dumps: Mapping[str, str] = attrs.field(factory=dict)
    #: Drill: what drills of the cell killed mid-way had left, removed first.
    cleaned: tuple[str, ...] = ()


@attrs.frozen
class VerifyReport(Report):
    """A verify run (any level): one result per archive and target."""

    results: tuple[VerifyResult, ...]
    level: str = "full"
    run: str | None = None
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


@attrs.frozen
class CellRestore(Report):
    """The restore of one cell."""

    cell: str
    ok: bool
    archive: str | None = None
    target: str | None = None
    destination: tuple[str, ...] = ()
    safety_backup: str | None = None
    stage: str | None = None
    error: str | None = None
    files: int = 0
    bytes: int = 0
    duration: float = 0.0
    #: Per part of the cell (``files:<root>``, ``dump:<dumper>``, ``safety backup``):
    #: what the restore did with it, in words (staged, swapped in, rolled back, left ...).
    parts: Mapping[str, str] = attrs.field(factory=dict)
    #: The command that undoes this restore (restores the safety backup), if there is one.
    undo: str | None = None
    #: What could not be restored as it was (an extended attribute this process
    #: may not set, a device node without root), one line per kind.
    warnings: tuple[str, ...] = ()


@attrs.frozen
class RestoreReport(Report):
    cells: tuple[CellRestore, ...]
    duration: float
    #: Set when the restore was aborted as a whole; says what was touched.
    error: str | None = None
    #: Interrupted earlier restores this run settled first, one sentence each.
    recovered: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None and all(c.ok for c in self.cells)
