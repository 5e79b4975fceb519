"""The backup operation: each cell packed once, stored to every target, checked, remembered.

Per cell (:class:`CellBackup`): lock the cell on every target (a target that
refuses goes on without it), plan (an incremental's parent), call the
before-backup hooks, pack into the run's spool folder, call the
after-snapshot hooks, store to every target at once and check each copy
(:mod:`cellvault.ops.store`). Cells run in parallel (``jobs``); all
archives of one run share one stamp.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

from .._version import __version__
from ..archive import ArchiveId, ArchiveMeta, Kind, Sidecar, format_stamp, parse_stamp, to_kind
from ..cell import Cell
from ..crypt import keep_manifest, kept_manifest, seal_file
from ..errors import (
    ArchiveCorrupt,
    BackupError,
    CellvaultError,
    DumpError,
    KeyMissing,
    TargetError,
)
from ..integrity import content_checksums
from ..lock import Lease
from ..log import get_logger
from ..manifest import Manifest
from ..pack import Packer, PackResult
from ..plugins import call_each
from ..report import BackupReport, CellReport, TargetOutcome
from ..run import Run, error_text
from ..runlog import carry
from ..scan import TotalsAhead
from ..state import StateFile, slot
from ..targets.base import Target
from ..trust import zstd_content_size
from .listing import configured_cells
from .outcome import recover_cells
from .resources import Resources, check_fence
from .store import store_all
from .verify import alert_ignored, quick_check

__all__ = [
    "CellBackup",
    "Totals",
    "backup",
    "find_parent",
    "iter_failures",
    "next_stamp",
    "record_backup",
    "target_error",
]

log = get_logger(__name__)


def backup(
    run: Run,
    res: Resources,
    cells: Sequence[str] | None,
    *,
    kind: Kind | None = None,
    targets: Sequence[str] | None = None,
    reason: str = "scheduled",
) -> BackupReport:
    """The operation of :meth:`cellvault.Vault.backup` (see there), as *run*."""
    kind = to_kind(kind or run.config.backup_type)
    chosen = configured_cells(run.config, cells)
    # A restore of these cells that was killed is settled before their data is read.
    recover_cells(run, chosen, operation="backup", dumpers=res.dumpers)
    tgts = res.chosen(targets)
    epoch = check_fence(run, res, tgts, "backup")
    started = time.monotonic()
    with res.stamp_lock:
        when = next_stamp(res, chosen, tgts)
    stamp = when.strftime("%Y%m%d_%H%M%S")
    names = [c.name for c in chosen]
    # The progress totals: what a full backup would read (an incremental
    # counts the files it finds unchanged as done), counted on another core
    # while the cells are packed; no progress is reported before they are in.
    totals = Totals(run, TotalsAhead(chosen))
    log.info("backup.started", run=run.id, stamp=stamp, kind=kind, cells=names)
    run.emit("backup.started", stamp=stamp, kind=kind, cells=names)

    def one(cell: Cell) -> CellReport:
        ident = ArchiveId(cell.name, when)
        return CellBackup(run, res, cell, ident, kind, tgts, reason, epoch=epoch, totals=totals)()

    try:
        with ThreadPoolExecutor(max_workers=run.config.jobs, thread_name_prefix="cell") as pool:
            reports = list(pool.map(carry(one), chosen))
        totals.given(wait=True)
    finally:
        totals.ahead.close()
    # The run's spool folder is shared by its cells: removed once, when all are done.
    shutil.rmtree(run.layout.run_spool(run.id), ignore_errors=True)
    report = BackupReport(
        run=run.id, stamp=stamp, cells=tuple(reports), duration=time.monotonic() - started
    )
    log.info("backup.finished", run=run.id, ok=report.ok, duration=round(report.duration, 3))
    run.emit("backup.finished", ok=report.ok)
    record_backup(res.state, run.config.verify_level, report, tgts)
    return report


def next_stamp(res: Resources, cells: Sequence[Cell], targets: Sequence[Target]) -> dt.datetime:
    """A stamp newer than every archive of *cells*: runs never share an id."""
    newest: dt.datetime | None = None
    for cell in cells:
        for target in targets:
            with contextlib.suppress(TargetError):
                ids = target.archive_ids(cell.name)
                if ids and (newest is None or ids[-1].when > newest):
                    newest = ids[-1].when
    now = res.now()
    if newest is None or now > newest:
        return now
    # Never wait for the clock (an archive stamped a month ahead by a skewed
    # host would stop every backup until then): the next id after the newest
    # keeps ids unique and ordered. A second run in the same second is usual;
    # a clock further behind is said.
    stamp = newest + dt.timedelta(seconds=1)
    if newest - now >= dt.timedelta(seconds=1):
        skew = (newest - now).total_seconds()
        log.warning(
            "backup.clock_behind",
            newest=format_stamp(newest),
            now=format_stamp(now),
            skew_seconds=skew,
            stamp=format_stamp(stamp),
            hint="the clock of this host is behind the newest archive (or that archive was "
            "stamped by a host whose clock ran ahead); check NTP on both",
        )
    return stamp


@attrs.define
class Totals:
    """The run's progress totals, given to its meter once the pre-scan has counted them.

    The meter is made by the first :meth:`Run.expect`: until then no
    progress is emitted nor logged, so that the totals are there from the
    first progress event on.
    """

    run: Run
    ahead: TotalsAhead
    _given: bool = attrs.field(init=False, default=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def given(self, *, wait: bool) -> bool:
        """Whether the totals are given (with *wait*, waiting for the pre-scan)."""
        with self._lock:
            if self._given:
                return True
            if not wait and not self.ahead.ready():
                return False
            for cell, found in zip(self.ahead.cells, self.ahead.get(), strict=True):
                self.run.expect(cells=1, bytes=found.bytes, files=found.files, cell=cell.name)
            self._given = True
            return True


class _NoTargetLeft(Exception):
    """No target of a cell's backup could be locked (each refusal is reported already)."""


@attrs.define
class CellBackup:
    """The backup of one cell in a run; calling it returns the cell's report.

    Whatever happens, the leases are released, the spool files removed, the
    after-snapshot hooks called once the before-backup hooks were, and the
    ``cellvault_after_backup`` hooks get the report.
    """

    run: Run
    res: Resources
    cell: Cell
    ident: ArchiveId
    kind: Kind
    targets: Sequence[Target]
    reason: str
    #: The DR epoch this site held at the start (recorded in the archive).
    epoch: int | None = None
    started: float = attrs.field(factory=time.monotonic)
    stage: str = "lock"
    leases: list[Lease] = attrs.Factory(list)
    #: The targets locked, and those that refused (with their outcome).
    live: list[Target] = attrs.Factory(list)
    refused: dict[str, TargetOutcome] = attrs.Factory(dict)
    #: Set once the before-backup hooks ran: the after-snapshot hooks then must too.
    snapshot_pending: bool = False
    packed: PackResult | None = None
    note: str | None = None
    #: The manifest's own size, taken before its copy is sealed (encryption).
    manifest_size: int | None = None
    #: The run's progress totals (``None``: given before, by the caller).
    totals: Totals | None = None

    def __call__(self) -> CellReport:
        try:
            report = self._back_up()
        except _NoTargetLeft:
            report = self._all_refused()
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
            report = self._crashed(exc)
        finally:
            for lease in self.leases:
                lease.release()
            if self.packed is not None:
                for path in (self.packed.data_path, self.packed.manifest_path):
                    with contextlib.suppress(OSError):
                        path.unlink()
        self.run.notify("cellvault_after_backup", report=report)
        self.run.emit("cell.finished", cell=self.cell.name, archive=report.archive, ok=report.ok)
        if self.totals is not None:
            self.totals.given(wait=True)
        self.run.advance(self.cell.name, finished=True)
        return report

    @property
    def log(self) -> Any:
        return log.bind(run=self.run.id, cell=self.cell.name, archive=str(self.ident))

    def _back_up(self) -> CellReport:
        self._lock()
        self._prepare_targets()
        self.stage = "plan"
        parent_meta: ArchiveMeta | None = None
        parent: Manifest | None = None
        if self.kind == "incremental":
            parent_meta, parent, self.note = find_parent(
                self.cell,
                self.live,
                self.run.config.max_chain,
                damaged=failed_verifies(self.res.state, self.cell.name),
                kept=self.run.layout.manifests(self.cell.name),
            )
            for target in self.live:
                alert_ignored(self.run, target, self.cell.name)
            if parent is None:
                self.log.info("backup.full_instead", reason=self.note)
        self.stage = "hook"
        self.snapshot_pending = True
        self.run.plugins.hook.cellvault_before_backup(cell=self.cell, archive=str(self.ident))
        self.stage = "pack"
        result = self._pack(parent, parent_meta)
        self.stage = "upload"
        outcomes = store_all(
            self.run,
            self.live,
            result,
            self._sidecar(result),
            fence=self.res.fence,
            leases={lease.target.name: lease for lease in self.leases},
        )
        return self._stored(result, outcomes)

    def _lock(self) -> None:
        """Lock the cell on each target; a target that refuses fails on its own."""
        for target in self.targets:
            try:
                lease = Lease.acquire(
                    target,
                    self.cell.name,
                    f"backup run {self.run.id}",
                    self.run.config.lock_ttl,
                )
            except CellvaultError as exc:
                self.refused[target.name] = TargetOutcome(
                    target=target.name, ok=False, stage="lock", error=str(exc)
                )
                self.run.fail(
                    "lock",
                    str(exc),
                    cell=self.cell.name,
                    target=target.name,
                    archive=str(self.ident),
                )
                continue
            self.leases.append(lease)
            self.live.append(target)
        if not self.live:
            raise _NoTargetLeft()

    def _prepare_targets(self) -> None:
        """Clear debris of interrupted runs; refuse to overwrite a newer committed archive."""
        for target in self.live:
            try:
                target.clear_debris(self.cell.name)
            except (
                CellvaultError
            ) as exc:  # housekeeping: the store will tell if the target is unusable
                self.log.warning("debris.clear_failed", target=target.name, error=str(exc))
        for target in self.live:
            # The stamp was chosen before the lock was ours: a run that held it
            # meanwhile may have committed this id (or a newer one). Storing now
            # would overwrite a committed archive, or chain onto itself.
            with contextlib.suppress(TargetError):
                ids = target.archive_ids(self.cell.name)
                if ids and ids[-1] >= self.ident:
                    raise BackupError(
                        f"cell {self.cell.name}: another run committed archive {ids[-1]} on target "
                        f"{target.name} while this run waited for its lock; nothing was written",
                        hint="run the backup again: it will take a newer stamp",
                    )

    def _pack(self, parent: Manifest | None, parent_meta: ArchiveMeta | None) -> PackResult:
        """Pack the cell into the run's spool folder, then call the after-snapshot hooks."""
        cell, archive = self.cell.name, str(self.ident)
        self.run.emit("cell.packing", cell=cell, archive=archive)
        packer = Packer(
            cell=self.cell,
            ident=self.ident,
            codec=self.res.codec,
            spool=self.run.layout.run_spool(self.run.id),
            host=self.run.host,
            version=__version__,
            reason=self.reason,
            parent=parent,
            parent_meta=parent_meta,
            checksum=self.run.config.checksum,
            on_progress=lambda done, files: self._progress(archive, done, files),
            dumpers=self.res.dumpers.get(cell, ()),
            epoch=self.epoch,
            site=self.res.fence.site,
            recipients=self.res.recipients,
        )
        self.packed = result = packer.pack()
        if self.res.recipients:
            result = self._seal(result)
        self.snapshot_pending = False
        after_snapshot(self.run, self.cell, self.ident, None)
        self.log.info(
            "archive.packed",
            size=result.size,
            files=result.files_stored,
            bytes=result.bytes_stored,
        )
        self.run.emit("archive.packed", cell=cell, archive=archive, size=result.size)
        return result

    def _seal(self, result: PackResult) -> PackResult:
        """Seal the manifest copy to the recipients, as the packer sealed the archive.

        The plain copy is kept on this host first (:func:`cellvault.crypt.keep_manifest`):
        the next incremental compares with it, without an identity.
        """
        recipients = self.res.recipients
        assert recipients is not None
        self.manifest_size = zstd_content_size(result.manifest_path)
        keep_manifest(
            self.run.layout.manifests(self.cell.name), str(self.ident), result.manifest_path
        )
        manifest, _, _ = seal_file(result.manifest_path, recipients)
        self.packed = result = attrs.evolve(result, manifest_path=manifest)
        self.log.info("archive.sealed", size=result.size, recipients=list(recipients.fingerprints))
        return result

    def _progress(self, archive: str, done: int, files: int) -> None:
        cell = self.cell.name
        self.run.emit("cell.progress", cell=cell, archive=archive, bytes=done, files=files)
        if self.totals is None or self.totals.given(wait=False):
            self.run.advance(cell, bytes=done, files=files)

    def _sidecar(self, result: PackResult) -> Sidecar:
        return Sidecar(
            meta=result.meta,
            data_name=result.data_path.name,
            size=result.size,
            sha256=result.sha256,
            files=result.entries,
            bytes_read=result.bytes_total,
            # Declared, so that no reader expands the manifest copy further.
            manifest_size=self.manifest_size
            if self.res.recipients
            else zstd_content_size(result.manifest_path),
            manifest_sha256=_file_sha256(result.manifest_path),
            # What the stores report on HEAD, for quick verifies (one read of the spool file).
            checksums=content_checksums(
                result.data_path, set().union(*(t.stat_checksums for t in self.live))
            ),
            encryption=self.res.recipients.fingerprints if self.res.recipients else None,
        )

    def _stored(self, result: PackResult, stored: list[TargetOutcome]) -> CellReport:
        """The report of a packed cell, with each target's outcome (in configured order)."""
        by_name = {o.target: o for o in stored} | self.refused
        outcomes = [by_name[t.name] for t in self.targets]
        failed = next((o for o in outcomes if not o.ok), None)
        return CellReport(
            cell=self.cell.name,
            ok=failed is None,
            archive=str(self.ident),
            kind=result.meta.kind,
            parent=str(result.meta.parent) if result.meta.parent else None,
            stage=failed.stage if failed else None,
            error=target_error(failed.target, failed.error) if failed else None,
            files=result.files_stored,
            bytes_read=result.bytes_stored,
            bytes_total=result.bytes_total,
            archive_size=result.size,
            duration=time.monotonic() - self.started,
            targets=tuple(outcomes),
            warnings=result.warnings,
            note=self.note,
            dumps=result.dumps,
        )

    def _all_refused(self) -> CellReport:
        outcomes = [self.refused[t.name] for t in self.targets]
        return CellReport(
            cell=self.cell.name,
            ok=False,
            archive=None,
            kind=self.kind,
            stage="lock",
            error=target_error(outcomes[0].target, outcomes[0].error),
            duration=time.monotonic() - self.started,
            targets=tuple(outcomes),
        )

    def _crashed(self, exc: Exception) -> CellReport:
        error = error_text(exc)
        if isinstance(exc, DumpError):
            self.stage = "dump"
        if self.snapshot_pending:
            after_snapshot(self.run, self.cell, self.ident, error)
        if not isinstance(exc, CellvaultError):
            self.log.exception("backup.crashed", stage=self.stage)
        self.run.fail(self.stage, error, cell=self.cell.name, archive=str(self.ident))
        return CellReport(
            cell=self.cell.name,
            ok=False,
            archive=None,
            kind=self.kind,
            stage=self.stage,
            error=error,
            duration=time.monotonic() - self.started,
            targets=tuple(self.refused[t.name] for t in self.targets if t.name in self.refused),
        )


def after_snapshot(run: Run, cell: Cell, ident: ArchiveId, error: str | None) -> None:
    """Call the after-snapshot hooks (resume writers); a failure is alerted, never fatal."""
    for outcome in call_each(
        run.plugins, "cellvault_after_snapshot", cell=cell, archive=str(ident), error=error
    ):
        if outcome.exception is not None:
            run.fail(
                "hook",
                f"after-snapshot hook of {outcome.plugin} failed: {error_text(outcome.exception)}",
                cell=cell.name,
                archive=str(ident),
            )


def failed_verifies(state: StateFile, cell: str) -> set[str]:
    """The archives of *cell* whose last verify (at any level, on any target) failed."""
    out: set[str] = set()
    per_target = state.read()["cells"].get(cell)
    for entry in per_target.values() if isinstance(per_target, dict) else ():
        levels = entry.get("verify") if isinstance(entry, dict) else None
        for record in levels.values() if isinstance(levels, dict) else ():
            if isinstance(record, dict) and not record.get("ok") and record.get("archive"):
                out.add(str(record["archive"]))
    return out


def find_parent(
    cell: Cell,
    targets: Sequence[Target],
    max_chain: int,
    *,
    damaged: set[str] | None = None,
    kept: Path | None = None,
) -> tuple[ArchiveMeta | None, Manifest | None, str | None]:
    """The parent of an incremental: the newest archive committed, whole, on every target.

    Only archives whose sidecar passes its checks count (an unusable one is
    reported once and skipped). The parent's whole chain must be committed
    on every target and pass the quick check there (size, the store's own
    checksums); otherwise the chain is broken and a full backup is made, as
    it is when the parent's manifest copy is unusable. A sealed manifest copy
    this host cannot open is taken from *kept* (:func:`cellvault.crypt.keep_manifest`).
    Returns its meta and
    manifest, or ``None`` twice and why a full backup is made instead.
    """
    common: dict[ArchiveId, Sidecar] | None = None
    readable: list[Target] = []
    for target in targets:
        try:
            found = {s.id: s for s in target.archives(cell.name)}
        except TargetError as exc:
            # Its store will fail (or its verify, if the chain is missing there).
            log.warning(
                "backup.parent_unreadable", cell=cell.name, target=target.name, error=str(exc)
            )
            continue
        readable.append(target)
        common = (
            found
            if common is None
            else {i: s for i, s in common.items() if i in found and found[i].sha256 == s.sha256}
        )
    if not common:
        return None, None, "no earlier archive on every target; made a full backup"
    sidecar = common[max(common)]
    if len(sidecar.meta.chain) + 1 >= max_chain:
        return None, None, f"chain reached max_chain={max_chain}; made a full backup"
    broken = _broken_link(sidecar, common, readable)
    failed = sorted({str(a) for a in (*sidecar.meta.chain, sidecar.id)} & (damaged or set()))
    if broken is None and failed:
        broken = f"the last verify of archive {failed[0]} failed"
    if broken is not None:
        log.warning("backup.chain_broken", cell=cell.name, archive=str(sidecar.id), error=broken)
        return None, None, f"the chain of {sidecar.id} is broken ({broken}); made a full backup"
    manifest: Manifest | None
    try:
        manifest = readable[0].manifest(sidecar)
    except KeyMissing:
        # Sealed, and this host holds only public keys: the copy it kept when it wrote it.
        manifest = kept_manifest(kept, sidecar) if kept is not None else None
        if manifest is None:
            return (
                None,
                None,
                (
                    f"the manifest of {sidecar.id} is encrypted, no identity is given and this "
                    "host kept no copy of it; made a full backup"
                ),
            )
    except ArchiveCorrupt as exc:
        log.warning("backup.parent_unusable", cell=cell.name, error=str(exc))
        return None, None, f"the manifest of {sidecar.id} is unusable; made a full backup"
    return sidecar.meta, manifest, None


def _broken_link(
    sidecar: Sidecar, common: dict[ArchiveId, Sidecar], targets: Sequence[Target]
) -> str | None:
    """The first archive of *sidecar*'s chain (itself included) missing or damaged on a target."""
    for ident in (*sidecar.meta.chain, sidecar.id):
        link = common.get(ident)
        if link is None:
            return f"archive {ident} is not committed, whole, on every target"
        for target in targets:
            try:
                quick_check(target, link, set(common))
            except CellvaultError as exc:
                return str(exc)
    return None


def record_backup(
    state: StateFile, level: str, report: BackupReport, targets: Sequence[Target]
) -> None:
    """Remember each cell's outcome on each target, for status and metrics.

    *level* is the check after the backup (``verify_level``): its result is
    remembered as that level's last verify.
    """
    at = parse_stamp(report.stamp).timestamp()
    checked = time.time()

    def change(data: dict[str, Any]) -> None:
        for cell in report.cells:
            outcomes = {o.target: o for o in cell.targets}
            for target in targets:
                entry = slot(data, cell.cell, target.name)
                outcome = outcomes.get(target.name)
                _record_one(entry, cell, outcome, at)
                if outcome is not None and (outcome.verified or outcome.stage == "verify"):
                    entry.setdefault("verify", {})[level] = {
                        "ok": outcome.verified,
                        "at": checked,
                        "archive": cell.archive,
                        "error": None if outcome.verified else outcome.error,
                    }

    state.update(change)


def _record_one(
    entry: dict[str, Any], cell: CellReport, outcome: TargetOutcome | None, at: float
) -> None:
    """Record one cell's backup on one target into its state *entry*."""
    ok = outcome is not None and outcome.ok
    entry["backup"] = {
        "at": at,
        "ok": ok,
        "archive": cell.archive,
        "kind": cell.kind,
        "duration": round(cell.duration, 3),
        "stage": None if ok else (outcome.stage if outcome else cell.stage),
        "error": None if ok else (outcome.error if outcome else cell.error),
    }
    if ok and outcome is not None:
        entry["last_success"] = at
        entry["last_good"] = {
            "archive": cell.archive,
            "bytes_read": cell.bytes_read,
            "bytes_stored": outcome.bytes_stored,
        }
    else:
        entry["failures_total"] = int(entry.get("failures_total", 0)) + 1


def target_error(target: str, error: str | None) -> str:
    """*error* of *target*, naming the target once."""
    text = error or "failed"
    return text if text.startswith(f"target {target}:") else f"target {target}: {text}"


def iter_failures(report: BackupReport) -> Iterator[str]:
    """Lines naming each failure of a backup report, for people."""
    for cell in report.cells:
        if cell.ok:
            continue
        failed = [o for o in cell.targets if not o.ok]
        for outcome in failed:
            yield f"cell {cell.cell}: {outcome.stage} to target {outcome.target} failed: {outcome.error}"
        # The cell's own failure (pack, hook, ...), unless it is one of the targets' above.
        if cell.error not in {target_error(o.target, o.error) for o in failed}:
            yield f"cell {cell.cell}: {cell.stage} failed: {cell.error}"


def _file_sha256(path: Path) -> str:
    """The sha256 of the file *path*, read a block at a time.

    Never read whole: the manifest copy of a cell of millions of paths is tens of MiB.
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
