"""What DR's steps return: reports built on :class:`cellvault.report.Report`.

A report's :meth:`~cellvault.report.Report.to_dict` is what ``--json`` prints.
The values inside a status that are not reports (what a target holds, the
lag of a cell) are :class:`~cellvault.dr.records.Record` values, without an ``ok``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping

import attrs

from ..report import BackupReport, Report, RestoreReport, VerifyReport
from .records import FailoverMarker, Holding, Record, SiteRecord

__all__ = [
    "CellLag",
    "CellSync",
    "FailbackReport",
    "FailoverReport",
    "HookOutcome",
    "PrepareReport",
    "StatusReport",
    "SwitchReport",
    "SyncReport",
    "TargetCheck",
    "TargetView",
]


@attrs.frozen
class CellSync(Report):
    """Copying one cell's archives from one target to another."""

    cell: str
    source: str
    target: str
    ok: bool
    #: Archives copied by this run, oldest first.
    copied: tuple[str, ...] = ()
    #: Archives of the source already committed on the target.
    present: int = 0
    #: Missing archives left out because the target's retention would not keep them.
    skipped: tuple[str, ...] = ()
    #: Missing archives not copied on purpose, each ``<id>: <why>`` (a pre-restore
    #: safety backup, an archive a fenced site wrote after the fence).
    ignored: tuple[str, ...] = ()
    #: What interrupted runs had left on the target (and in the spool), removed.
    debris: tuple[str, ...] = ()
    bytes: int = 0
    duration: float = 0.0
    #: Set when another run holds the cell's lease on the target: the cell was left to it.
    locked: str | None = None
    stage: str | None = None
    error: str | None = None


@attrs.frozen
class SyncReport(Report):
    """A push or a pull: every cell, every source and destination."""

    mode: str
    site: str
    cells: tuple[CellSync, ...]
    duration: float
    #: Problems that did not fail the sync (a site record that could not be written).
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.cells)

    @property
    def copied(self) -> list[str]:
        """Every archive this run copied."""
        return [a for c in self.cells for a in c.copied]

    @property
    def bytes(self) -> int:
        return sum(c.bytes for c in self.cells)

    @property
    def locked(self) -> list[CellSync]:
        return [c for c in self.cells if c.locked]


@attrs.frozen
class TargetCheck(Report):
    """Whether a target can be reached, listed, written and read (a probe object)."""

    target: str
    ok: bool
    error: str | None = None
    duration: float = 0.0


@attrs.frozen
class PrepareReport(Report):
    """Preparing a site: its directories, its targets, a pull, what it holds."""

    site: str
    created: tuple[str, ...]
    checks: tuple[TargetCheck, ...]
    pull: SyncReport | None
    #: cell -> what the site's own backup directory holds after the pull.
    holdings: Mapping[str, Holding]
    duration: float

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and (self.pull is None or self.pull.ok)


@attrs.frozen
class HookOutcome(Report):
    """One ``cellvault_failover`` or ``cellvault_switch_traffic`` implementation's result."""

    plugin: str
    ok: bool
    error: str | None = None
    #: What a traffic switch says it switched.
    detail: str | None = None


@attrs.frozen
class SwitchReport(Report):
    """What a failover and either step of a failback report: the checks, the marker, the hooks."""

    site: str
    ok: bool
    marker: FailoverMarker | None = None
    pull: SyncReport | None = None
    verify: VerifyReport | None = None
    restore: RestoreReport | None = None
    hooks: tuple[HookOutcome, ...] = ()
    #: Where the marker was written (target names, and ``local``), or cleared.
    marker_written: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    #: The manual switch steps (DNS, SLB, Ingress) to follow.
    steps: tuple[str, ...] = ()
    error: str | None = None
    duration: float = 0.0
    #: The DR epoch this site took (:mod:`cellvault.fence`), when it took one.
    epoch: int | None = None


@attrs.frozen
class FailoverReport(SwitchReport):
    """A failover on the standby: pull, checks, verify, restore, marker, hooks."""


@attrs.frozen
class FailbackReport(SwitchReport):
    """One step of a failback.

    *step* ``handback`` runs on the active (standby) site: a final backup,
    a push, and the hand-back recorded in the marker. *step* ``takeover``
    runs on the recovered primary: a pull, a verify, the restore of what was
    handed back, the marker cleared, the hooks.
    """

    step: str = attrs.field(kw_only=True)
    backup: BackupReport | None = None
    push: SyncReport | None = None


@attrs.frozen
class TargetView(Record):
    """What one target holds, per cell, as a status sees it."""

    target: str
    reachable: bool
    cells: Mapping[str, Holding] = attrs.field(factory=dict)
    error: str | None = None


@attrs.frozen
class CellLag(Record):
    """How far this site's backup directory is from one object-storage target, for one cell."""

    cell: str
    target: str
    #: Newest archive here and there.
    local: str | None
    remote: str | None
    #: How far apart the newest archives are, in seconds (never negative; see *leader*).
    lag_seconds: float | None
    #: Archives there that this site lacks (what a pull would bring).
    behind: int
    #: Archives here that the target lacks (what a push would bring).
    ahead: int
    #: Which side holds the newer archive: ``local`` (this site), ``remote`` (the
    #: target) or ``even``. Pre-restore safety backups never count: they stay
    #: on the site that took them.
    leader: str = "even"
    #: The archives a pull (*behind*) or a push (*ahead*) would bring, oldest first.
    behind_archives: tuple[str, ...] = ()
    ahead_archives: tuple[str, ...] = ()
    #: Pre-restore safety backups on either side: they stay on the site that
    #: took them and are never counted.
    safety: tuple[str, ...] = ()


@attrs.frozen
class StatusReport(Report):
    """Which site is active, and how far each site and target is behind."""

    site: str
    #: The site that serves: the marker's, or ``None`` when no failover is in effect.
    active: str | None
    marker: FailoverMarker | None
    #: Where the marker was read: a target name, ``local``, or ``None``.
    marker_source: str | None
    targets: tuple[TargetView, ...]
    lag: tuple[CellLag, ...]
    #: What every site recorded at its last DR step (the other site's view, too).
    sites: tuple[SiteRecord, ...]
    warnings: tuple[str, ...] = ()
    #: The current DR epoch (:mod:`cellvault.fence`): its number, the site that
    #: holds it (the only one that may write to the object storage) and since when.
    epoch: int | None = None
    epoch_site: str | None = None
    epoch_since: dt.datetime | None = None

    @property
    def ok(self) -> bool:
        return all(t.reachable for t in self.targets)
