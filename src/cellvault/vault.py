"""The façade a platform service or the command line holds: a :class:`Vault`.

A vault is cells + targets + policies. Its methods run whole operations and
return reports; they never print, never exit and never configure logging.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pluggy

from ._version import __version__
from .archive import ArchiveId, ArchiveMeta, Selector, Sidecar, utcnow
from .cell import Cell, validate_cell_name
from .codec import Codec, get_codec
from .config import Config, load_env, load_toml
from .errors import (
    ArchiveCorrupt,
    ArchiveNotFound,
    BackupError,
    CellvaultError,
    ConfigError,
    RestoreError,
    TargetError,
)
from .events import Event
from .extract import ArchiveStream, StagedTree, verify_archive
from .lock import Lease
from .log import get_logger, redact_text
from .manifest import Manifest
from .pack import Packer, PackResult
from .plugins import make_plugin_manager
from .report import (
    BackupReport,
    CellReport,
    CellRestore,
    Failure,
    RestoreReport,
    TargetOutcome,
    VerifyReport,
    VerifyResult,
)
from .retention import PruneReport, PruneResult, prune_cell
from .swap import Swap
from .targets.base import Target

__all__ = ["ArchiveInfo", "Vault"]

log = get_logger(__name__)


@attrs.frozen
class ArchiveInfo:
    """One archive as :meth:`Vault.list` shows it, merged across targets."""

    id: str
    cell: str
    kind: str
    backed_at: str
    size: int
    files: int
    parent: str | None
    chain: tuple[str, ...]
    reason: str
    targets: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


class _NoTargetLeft(Exception):
    """Internal: no target of a cell's backup could be locked."""


def _target_error(target: str, error: str | None) -> str:
    """*error* of *target*, naming the target once."""
    text = error or "failed"
    return text if text.startswith(f"target {target}:") else f"target {target}: {text}"


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, CellvaultError):
        return str(exc)
    return redact_text(f"{type(exc).__name__}: {exc}")


class Vault:
    """Back up, verify, list and restore the cells of a :class:`Config`.

    *plugins* are registered after the built-ins and entry points (pass
    ``load_entry_points=False`` to load none, as tests do). *on_event* is
    called with an :class:`Event` for every step; it may be called from worker
    threads. *clock* gives the current UTC time (tests pass a fake one).
    """

    def __init__(
        self,
        config: Config,
        *,
        plugins: Iterable[object] = (),
        load_entry_points: bool = True,
        on_event: Callable[[Event], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.config = config
        self.plugins: pluggy.PluginManager = make_plugin_manager(
            plugins, load_entry_points=load_entry_points
        )
        self.on_event = on_event
        self.clock = clock
        self.host = socket.gethostname()
        self.codec: Codec = get_codec(config.codec, config.level)
        self.targets: list[Target] = [self._make_target(spec) for spec in config.target_specs]
        self._stamp_lock = threading.Lock()

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Vault:
        """A vault from a TOML configuration file."""
        return cls(load_toml(Path(path)), **kwargs)

    @classmethod
    def from_env(
        cls,
        environ: dict[str, str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Vault:
        """A vault from the seed's environment variables (and its ``backup_config.env``)."""
        return cls(load_env(environ, Path(env_file) if env_file else None), **kwargs)

    def _make_target(self, spec: Any) -> Target:
        target = self.plugins.hook.cellvault_make_target(spec=spec)
        if target is None:
            raise ConfigError(
                f"target {spec.name}: no target type handles {spec.display()}",
                hint="install the plugin or fsspec backend for this URL scheme",
            )
        return target  # type: ignore[no-any-return]

    # -- helpers ---------------------------------------------------------

    @property
    def spool(self) -> Path:
        return self.config.backup_dir / ".cellvault" / "spool"

    def target(self, name: str) -> Target:
        """The configured target called *name*."""
        for target in self.targets:
            if target.name == name:
                return target
        known = ", ".join(t.name for t in self.targets)
        raise ConfigError(f"unknown target {name!r}", hint=f"configured targets: {known}")

    def _emit(self, name: str, run: str, **fields: Any) -> None:
        if self.on_event is None:
            return
        data = {k: v for k, v in fields.items() if k not in ("cell", "target", "archive")}
        event = Event(
            name,
            run,
            cell=fields.get("cell"),
            target=fields.get("target"),
            archive=fields.get("archive"),
            data=data,
        )
        try:
            self.on_event(event)
        except Exception as exc:  # noqa: BLE001 - a caller's callback must not break a backup
            log.warning("event.callback_failed", event_name=name, error=_error_text(exc))

    def _failed(self, failure: Failure) -> None:
        log.error(
            f"{failure.operation}.failed",
            stage=failure.stage,
            cell=failure.cell,
            target=failure.target,
            archive=failure.archive,
            run=failure.run,
            error=failure.error,
        )
        # Each notifier on its own: one that fails must not keep the others silent.
        self._notify("cellvault_backup_failed", failure=failure)

    def _notify(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of *hook*; log and swallow what each raises.

        For the hooks whose exceptions never change a run's result (alerts,
        after-backup and after-restore notifications).
        """
        for impl in reversed(getattr(self.plugins.hook, hook).get_hookimpls()):
            try:
                impl.function(*(kwargs[name] for name in impl.argnames))
            except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
                log.error(
                    "plugin.hook_failed", hook=hook, plugin=impl.plugin_name, error=_error_text(exc)
                )

    def _cells(self, names: Sequence[str] | None) -> list[Cell]:
        if not names:
            if not self.config.cells:
                raise ConfigError(
                    "no cells are configured", hint="set BACKUP_CELLS or [cells] in the config"
                )
            return list(self.config.cells)
        return [self.config.cell(n) for n in dict.fromkeys(names)]

    def _next_stamp(self, cells: Sequence[Cell], targets: Sequence[Target]) -> dt.datetime:
        """A stamp newer than every archive of *cells*: runs never share an id."""
        newest: dt.datetime | None = None
        for cell in cells:
            for target in targets:
                with contextlib.suppress(TargetError):
                    ids = target.archive_ids(cell.name)
                    if ids and (newest is None or ids[-1].when > newest):
                        newest = ids[-1].when
        now = self._now()
        while newest is not None and now <= newest:
            # Two runs in the same second: wait for the next one rather than
            # stamping an archive with a time that has not come yet.
            time.sleep(max(0.05, 1 - (time.time() % 1)))
            now = self._now()
        return now

    def _now(self) -> dt.datetime:
        """The clock's time as an archive instant: UTC, whole seconds (naive counts as UTC)."""
        now = self.clock()
        if now.tzinfo is None:
            now = now.replace(tzinfo=dt.UTC)
        return now.astimezone(dt.UTC).replace(microsecond=0)

    # -- backup ----------------------------------------------------------

    def backup(
        self,
        cells: Sequence[str] | None = None,
        *,
        kind: str | None = None,
        targets: Sequence[str] | None = None,
        reason: str = "scheduled",
    ) -> BackupReport:
        """Back up *cells* (all by default) to *targets* (all by default).

        *kind* is ``full`` or ``incremental`` (default: the config's
        ``backup_type``). Each cell's archive is built once, stored to every
        target at once, and read back and checked on each (unless
        ``verify_after_backup`` is off). All archives of one run share one
        stamp. Failures are in the report (and sent to the
        ``cellvault_backup_failed`` hook); nothing committed is ever partial.
        """
        kind = kind or self.config.backup_type
        if kind not in ("full", "incremental"):
            raise ConfigError(f"backup kind {kind!r} is neither full nor incremental")
        chosen = self._cells(cells)
        tgts = [self.target(n) for n in targets] if targets else list(self.targets)
        run = secrets.token_hex(6)
        started = time.monotonic()
        with self._stamp_lock:
            when = self._next_stamp(chosen, tgts)
        stamp = when.strftime("%Y%m%d_%H%M%S")
        log.info("backup.started", run=run, stamp=stamp, kind=kind, cells=[c.name for c in chosen])
        self._emit("backup.started", run, stamp=stamp, kind=kind, cells=[c.name for c in chosen])
        with ThreadPoolExecutor(max_workers=self.config.jobs, thread_name_prefix="cell") as pool:
            reports = list(
                pool.map(
                    lambda c: self._backup_cell(
                        c, ArchiveId(c.name, when), kind, tgts, run, reason
                    ),
                    chosen,
                )
            )
        # The run's spool folder is shared by its cells: removed once, when all are done.
        shutil.rmtree(self.spool / run, ignore_errors=True)
        report = BackupReport(
            run=run, stamp=stamp, cells=tuple(reports), duration=time.monotonic() - started
        )
        log.info("backup.finished", run=run, ok=report.ok, duration=round(report.duration, 3))
        self._emit("backup.finished", run, ok=report.ok)
        return report

    def _backup_cell(
        self, cell: Cell, ident: ArchiveId, kind: str, targets: list[Target], run: str, reason: str
    ) -> CellReport:
        started = time.monotonic()
        blog = log.bind(run=run, cell=cell.name, archive=str(ident))
        stage = "lock"
        leases: list[Lease] = []
        result: PackResult | None = None
        note = None
        # A target that cannot be locked fails on its own; the others go on.
        refused: dict[str, TargetOutcome] = {}
        live: list[Target] = []
        try:
            for target in targets:
                try:
                    leases.append(
                        Lease.acquire(target, cell.name, f"backup run {run}", self.config.lock_ttl)
                    )
                except CellvaultError as exc:
                    refused[target.name] = TargetOutcome(
                        target=target.name, ok=False, stage="lock", error=str(exc)
                    )
                    self._failed(
                        Failure(
                            stage="lock",
                            error=str(exc),
                            cell=cell.name,
                            target=target.name,
                            archive=str(ident),
                            run=run,
                            host=self.host,
                        )
                    )
                    continue
                live.append(target)
            if not live:
                raise _NoTargetLeft()
            for target in live:
                try:
                    target.clear_debris(cell.name)
                except (
                    CellvaultError
                ) as exc:  # housekeeping: the store will tell if the target is unusable
                    blog.warning("debris.clear_failed", target=target.name, error=str(exc))
            for target in live:
                # The stamp was chosen before the lock was ours: a run that held it
                # meanwhile may have committed this id (or a newer one). Storing now
                # would overwrite a committed archive, or chain onto itself.
                with contextlib.suppress(TargetError):
                    ids = target.archive_ids(cell.name)
                    if ids and ids[-1] >= ident:
                        raise BackupError(
                            f"cell {cell.name}: another run committed archive {ids[-1]} on target "
                            f"{target.name} while this run waited for its lock; nothing was written",
                            hint="run the backup again: it will take a newer stamp",
                        )
            stage = "plan"
            parent_meta: ArchiveMeta | None = None
            parent: Manifest | None = None
            if kind == "incremental":
                parent_meta, parent, note = self._parent(cell, live)
                if parent is None:
                    blog.info("backup.full_instead", reason=note)
            stage = "hook"
            self.plugins.hook.cellvault_before_backup(cell=cell, archive=str(ident))
            stage = "pack"
            self._emit("cell.packing", run, cell=cell.name, archive=str(ident))
            packer = Packer(
                cell=cell,
                ident=ident,
                codec=self.codec,
                spool=self.spool / run,
                host=self.host,
                version=__version__,
                reason=reason,
                parent=parent,
                parent_meta=parent_meta,
                checksum=self.config.checksum,
                on_progress=lambda done, files: self._emit(
                    "cell.progress",
                    run,
                    cell=cell.name,
                    archive=str(ident),
                    bytes=done,
                    files=files,
                ),
            )
            result = packer.pack()
            blog.info(
                "archive.packed",
                size=result.size,
                files=result.files_stored,
                bytes=result.bytes_stored,
            )
            self._emit("archive.packed", run, cell=cell.name, archive=str(ident), size=result.size)
            sidecar = Sidecar(
                meta=result.meta,
                data_name=result.data_path.name,
                size=result.size,
                sha256=result.sha256,
                files=len(result.manifest),
                bytes_read=result.bytes_total,
            )
            stage = "upload"
            with ThreadPoolExecutor(max_workers=len(live), thread_name_prefix="store") as pool:
                stored = list(pool.map(lambda t: self._store(t, result, sidecar, run), live))
            by_name = {o.target: o for o in stored} | refused
            outcomes = [by_name[t.name] for t in targets]
            ok = all(o.ok for o in outcomes)
            failed = next((o for o in outcomes if not o.ok), None)
            report = CellReport(
                cell=cell.name,
                ok=ok,
                archive=str(ident),
                kind=result.meta.kind,
                parent=str(result.meta.parent) if result.meta.parent else None,
                stage=failed.stage if failed else None,
                error=_target_error(failed.target, failed.error) if failed else None,
                files=result.files_stored,
                bytes_read=result.bytes_stored,
                bytes_total=result.bytes_total,
                archive_size=result.size,
                duration=time.monotonic() - started,
                targets=tuple(outcomes),
                warnings=result.warnings,
                note=note,
            )
        except _NoTargetLeft:
            # Every target refused its lock; each failure was reported already.
            outcomes = [refused[t.name] for t in targets]
            report = CellReport(
                cell=cell.name,
                ok=False,
                archive=None,
                kind=kind,
                stage="lock",
                error=_target_error(outcomes[0].target, outcomes[0].error),
                duration=time.monotonic() - started,
                targets=tuple(outcomes),
            )
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
            error = _error_text(exc)
            if not isinstance(exc, CellvaultError):
                blog.exception("backup.crashed", stage=stage)
            self._failed(
                Failure(
                    stage=stage,
                    error=error,
                    cell=cell.name,
                    archive=str(ident),
                    run=run,
                    host=self.host,
                )
            )
            report = CellReport(
                cell=cell.name,
                ok=False,
                archive=None,
                kind=kind,
                stage=stage,
                error=error,
                duration=time.monotonic() - started,
                targets=tuple(refused[t.name] for t in targets if t.name in refused),
            )
        finally:
            for lease in leases:
                lease.release()
            if result is not None:
                for path in (result.data_path, result.manifest_path):
                    with contextlib.suppress(OSError):
                        path.unlink()
        self._notify("cellvault_after_backup", report=report)
        self._emit("cell.finished", run, cell=cell.name, archive=report.archive, ok=report.ok)
        return report

    def _parent(
        self, cell: Cell, targets: list[Target]
    ) -> tuple[ArchiveMeta | None, Manifest | None, str | None]:
        """The parent of an incremental: the newest archive committed on every target."""
        common: set[ArchiveId] | None = None
        readable: list[Target] = []
        for target in targets:
            try:
                ids = set(target.archive_ids(cell.name))
            except TargetError as exc:
                # Its store will fail (or its verify, if the chain is missing there).
                log.warning(
                    "backup.parent_unreadable", cell=cell.name, target=target.name, error=str(exc)
                )
                continue
            readable.append(target)
            common = ids if common is None else common & ids
        if not common:
            return None, None, "no earlier archive on every target; made a full backup"
        newest = max(common)
        sidecar = readable[0].sidecar(newest)
        if len(sidecar.meta.chain) + 1 >= self.config.max_chain:
            return (
                None,
                None,
                f"chain reached max_chain={self.config.max_chain}; made a full backup",
            )
        manifest = readable[0].manifest(sidecar)
        return sidecar.meta, manifest, None

    def _store(
        self, target: Target, result: PackResult, sidecar: Sidecar, run: str
    ) -> TargetOutcome:
        started = time.monotonic()
        ident = str(sidecar.id)
        stage = "upload"
        try:
            target.store(result.data_path, result.manifest_path, sidecar)
            log.info(
                "archive.stored", run=run, cell=sidecar.id.cell, archive=ident, target=target.name
            )
            self._emit(
                "archive.stored", run, cell=sidecar.id.cell, archive=ident, target=target.name
            )
            verified = False
            if self.config.verify_after_backup:
                stage = "verify"
                self._verify_one(target, sidecar)
                verified = True
                self._emit(
                    "archive.verified", run, cell=sidecar.id.cell, archive=ident, target=target.name
                )
            return TargetOutcome(
                target=target.name,
                ok=True,
                bytes_stored=sidecar.size,
                duration=time.monotonic() - started,
                verified=verified,
            )
        except Exception as exc:
            error = _error_text(exc)
            if not isinstance(exc, CellvaultError):
                log.exception("store.crashed", target=target.name, archive=ident)
            if stage == "verify":
                # A copy that does not verify must not count: uncommit it.
                with contextlib.suppress(Exception):
                    target.delete(target.sidecar_key(sidecar.id))
            self._failed(
                Failure(
                    stage=stage,
                    error=error,
                    cell=sidecar.id.cell,
                    target=target.name,
                    archive=ident,
                    run=run,
                    host=self.host,
                )
            )
            return TargetOutcome(
                target=target.name,
                ok=False,
                stage=stage,
                error=error,
                duration=time.monotonic() - started,
            )

    # -- verify ----------------------------------------------------------

    def _verify_one(self, target: Target, sidecar: Sidecar) -> int:
        with target.open_archive(sidecar) as raw:
            _, manifest, members = verify_archive(raw, sidecar, target.name)
        # Incrementals and restore planning trust the stored manifest copy: it
        # must say exactly what the archive's own manifest says.
        if target.manifest(sidecar).entries != manifest.entries:
            raise ArchiveCorrupt(
                "the stored manifest copy differs from the archive's manifest.json",
                archive=str(sidecar.id),
                target=target.name,
                hint="take a new full backup; restore this archive from another target",
            )
        committed = set(target.archive_ids(sidecar.id.cell))
        needed = {str(a) for a in sidecar.meta.chain} | manifest.holders()
        for holder in sorted(needed - {str(sidecar.id)}):
            if ArchiveId.parse(holder) not in committed:
                raise ArchiveCorrupt(
                    f"its chain needs archive {holder}, which is not committed on this target",
                    archive=str(sidecar.id),
                    target=target.name,
                    hint="restore from another target, or take a full backup",
                )
        return members

    def verify(
        self,
        cells: Sequence[str] | None = None,
        *,
        targets: Sequence[str] | None = None,
        select: str | Selector = "latest",
        all_archives: bool = False,
    ) -> VerifyReport:
        """Read archives back from each target and check them completely.

        By default the latest archive of each cell on each target; with
        *all_archives*, every committed one. Checks the sha256 against the
        sidecar, every member against the manifest, ``backed_at`` in
        ``meta.json``, and that an incremental's chain is committed there.
        """
        selector = select if isinstance(select, Selector) else Selector.parse(select)
        if cells:
            names = self._known_cells(cells)
        else:
            names = [c.name for c in self.config.cells] or self._all_cells()
        tgts = [self.target(n) for n in targets] if targets else list(self.targets)
        run = secrets.token_hex(6)
        results = []
        for target in tgts:
            for cell in names:
                try:
                    sidecars = target.archives(cell)
                except TargetError as exc:
                    results.append(
                        VerifyResult(
                            archive=f"cell_{cell}", target=target.name, ok=False, error=str(exc)
                        )
                    )
                    continue
                chosen = [s for s in sidecars if selector.matches(s.id)]
                if not all_archives:
                    chosen = chosen[-1:]
                for sidecar in chosen:
                    results.append(self._verify_result(target, sidecar, run))
        return VerifyReport(results=tuple(results))

    def _verify_result(self, target: Target, sidecar: Sidecar, run: str) -> VerifyResult:
        started = time.monotonic()
        try:
            members = self._verify_one(target, sidecar)
        except CellvaultError as exc:
            self._failed(
                Failure(
                    stage="verify",
                    error=str(exc),
                    cell=sidecar.id.cell,
                    target=target.name,
                    archive=str(sidecar.id),
                    run=run,
                    host=self.host,
                    operation="verify",
                )
            )
            return VerifyResult(
                archive=str(sidecar.id),
                target=target.name,
                ok=False,
                error=str(exc),
                duration=time.monotonic() - started,
            )
        log.info("verify.ok", archive=str(sidecar.id), target=target.name, members=members)
        return VerifyResult(
            archive=str(sidecar.id),
            target=target.name,
            ok=True,
            members=members,
            duration=time.monotonic() - started,
        )

    # -- list ------------------------------------------------------------

    def _known_cells(self, names: Sequence[str]) -> list[str]:
        """*names*, each configured or with archives on some target; :class:`ConfigError` otherwise.

        Reading archives (a DR site's verify) needs no configured cell, but
        a name nobody knows is a typo, not an empty result.
        """
        wanted = [validate_cell_name(n) for n in dict.fromkeys(names)]
        configured = {c.name for c in self.config.cells}
        if all(n in configured for n in wanted):
            return wanted
        known = self._all_cells()
        for name in wanted:
            if name not in known:
                raise ConfigError(
                    f"unknown cell {name!r}: not configured and no archive of it on any target",
                    hint=f"known cells: {', '.join(known) or 'none'}",
                )
        return wanted

    def _all_cells(self) -> list[str]:
        names: set[str] = {c.name for c in self.config.cells}
        for target in self.targets:
            with contextlib.suppress(TargetError):
                names.update(target.cells())
        return sorted(names)

    def list(
        self, cells: Sequence[str] | None = None, *, targets: Sequence[str] | None = None
    ) -> list[ArchiveInfo]:
        """The committed archives, oldest first, each with the targets that hold it."""
        names = (
            [validate_cell_name(c) for c in dict.fromkeys(cells)] if cells else self._all_cells()
        )
        tgts = [self.target(n) for n in targets] if targets else list(self.targets)
        found: dict[ArchiveId, tuple[Sidecar, list[str]]] = {}
        errors: list[TargetError] = []
        for target in tgts:
            for cell in names:
                try:
                    sidecars = target.archives(cell)
                except TargetError as exc:
                    # One unreachable target must not hide what the others hold.
                    log.warning(
                        "list.target_unreadable", target=target.name, cell=cell, error=str(exc)
                    )
                    errors.append(exc)
                    continue
                for sidecar in sidecars:
                    found.setdefault(sidecar.id, (sidecar, []))[1].append(target.name)
        if errors and len(errors) == len(tgts) * len(names):
            raise errors[0]
        out = []
        for ident in sorted(found, key=lambda i: (i.when, i.cell)):
            sidecar, where = found[ident]
            meta = sidecar.meta
            out.append(
                ArchiveInfo(
                    id=str(ident),
                    cell=ident.cell,
                    kind=meta.kind,
                    backed_at=meta.to_dict()["backed_at"],
                    size=sidecar.size,
                    files=sidecar.files,
                    parent=str(meta.parent) if meta.parent else None,
                    chain=tuple(str(a) for a in meta.chain),
                    reason=meta.reason,
                    targets=tuple(where),
                )
            )
        return out

    # -- restore ---------------------------------------------------------

    # -- prune -----------------------------------------------------------

    def prune(
        self,
        cells: Sequence[str] | None = None,
        *,
        targets: Sequence[str] | None = None,
        dry_run: bool = False,
    ) -> PruneReport:
        """Delete the archives each target's retention policy no longer keeps.

        Per target and cell, under the cell's lease: archives go newest first,
        each sidecar before its data, and an archive a kept archive needs is
        never deleted, nor a cell's newest (full) archive. Debris of
        interrupted runs goes too. With *dry_run*, every decision and its
        reasons are returned and nothing is touched. A target that cannot be
        pruned is reported (and alerted) without stopping the others.
        """
        names = self._known_cells(cells) if cells else self._all_cells()
        tgts = [self.target(n) for n in targets] if targets else builtins.list(self.targets)
        run = secrets.token_hex(6)
        now = self._now()
        results: builtins.list[PruneResult] = []
        for target in tgts:
            policy = self.config.retention_for(target.name)
            for cell in names:
                try:
                    result = prune_cell(
                        target, cell, policy, now, dry_run=dry_run, lock_ttl=self.config.lock_ttl
                    )
                except CellvaultError as exc:
                    self._failed(
                        Failure(
                            stage="prune",
                            error=str(exc),
                            cell=cell,
                            target=target.name,
                            run=run,
                            host=self.host,
                            operation="prune",
                        )
                    )
                    result = PruneResult(target.name, cell, (), dry_run, error=str(exc))
                results.append(result)
                self._emit(
                    "prune.cell",
                    run,
                    cell=cell,
                    target=target.name,
                    removed=[str(d.id) for d in result.removed],
                    dry_run=dry_run,
                )
        return PruneReport(results=tuple(results), dry_run=dry_run)

    def restore(
        self,
        select: str | Selector = "latest",
        *,
        cells: Sequence[str] | None = None,
        into: str | os.PathLike[str] | None = None,
        skip_prebackup: bool = False,
        source: Sequence[str] | None = None,
        allow_external_links: bool = False,
    ) -> RestoreReport:
        """Restore cells to the archive *select* picks (``latest``, an id, a date prefix, a time).

        Into the cells' own paths (after a safety backup of the current data,
        unless *skip_prebackup*) or, with *into*, under ``<into>/<cell>/``.
        Every archive is planned first: an unknown cell, a malformed date, a
        missing archive or a broken chain raises before anything is touched.
        Each cell is extracted into a staging directory beside its
        destination, checked file by file against the manifest, handed to the
        restore hooks, and only then swapped into place. If any step fails,
        the live data is left as it was. *source* orders the targets to read
        from (default: configured order, so local first).
        """
        selector = select if isinstance(select, Selector) else Selector.parse(select)
        started = time.monotonic()
        run = secrets.token_hex(6)
        into_path = Path(into).expanduser().absolute() if into is not None else None
        sources = [self.target(n) for n in source] if source else list(self.targets)
        names = list(dict.fromkeys(cells)) if cells else [c.name for c in self._cells(None)]
        plans = [self._plan(name, selector, sources, into_path) for name in names]
        log.info("restore.planned", run=run, archives=[str(p.sidecar.id) for p in plans])
        self._emit("restore.planned", run, archives=[str(p.sidecar.id) for p in plans])

        safety: dict[str, str] = {}
        if into_path is None and not skip_prebackup:
            present = [
                p.cell.name
                for p in plans
                if any(d.exists() or d.is_symlink() for d in p.dests.values())
            ]
            if present:
                pre = self.backup(
                    present, kind="full", targets=[self.targets[0].name], reason="pre-restore"
                )
                if not pre.ok:
                    failed = pre.failures()[0]
                    raise RestoreError(
                        f"the safety backup of cell {failed.cell} failed, so nothing was restored: {failed.error}",
                        hint="fix the backup directory or its permissions and retry, "
                        "or (with approval) skip it with RESTORE_SKIP_PREBACKUP=1",
                    )
                safety = {c.cell: c.archive or "" for c in pre.cells}

        staged: list[tuple[_Plan, Swap]] = []
        results: dict[str, CellRestore] = {}
        error: str | None = None
        try:
            with ThreadPoolExecutor(
                max_workers=self.config.jobs, thread_name_prefix="restore"
            ) as pool:
                outcomes = list(
                    pool.map(lambda p: self._stage(p, run, allow_external_links), plans)
                )
            for plan, outcome in zip(plans, outcomes, strict=True):
                if isinstance(outcome, CellRestore):
                    results[plan.cell.name] = outcome
                else:
                    staged.append((plan, outcome))
            if len(staged) == len(plans):
                # Everything is extracted and checked: only now touch live data.
                done: list[Swap] = []
                try:
                    for plan, swap in staged:
                        swap.commit()
                        done.append(swap)
                        self._emit(
                            "restore.swapped",
                            run,
                            cell=plan.cell.name,
                            archive=str(plan.sidecar.id),
                        )
                except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
                    for swap in reversed(done):
                        swap.rollback()
                    raise RestoreError(
                        f"swapping the restored data into place failed: {_error_text(exc)}"
                    ) from None
                for swap in done:
                    swap.cleanup()
                for plan, swap in staged:
                    results[plan.cell.name] = CellRestore(
                        cell=plan.cell.name,
                        ok=True,
                        archive=str(plan.sidecar.id),
                        target=plan.target.name,
                        destination=tuple(str(d) for d in plan.dests.values()),
                        safety_backup=safety.get(plan.cell.name),
                        files=swap.files,
                        bytes=swap.bytes,
                        duration=swap.duration,
                    )
            else:
                error = "restore aborted before any live data was touched: " + "; ".join(
                    f"cell {c}: {r.error}" for c, r in results.items() if not r.ok
                )
                for plan, swap in staged:
                    swap.discard()
                    results[plan.cell.name] = CellRestore(
                        cell=plan.cell.name,
                        ok=False,
                        archive=str(plan.sidecar.id),
                        target=plan.target.name,
                        stage="aborted",
                        error="not swapped in because another cell failed",
                    )
        except RestoreError as exc:
            error = str(exc)
            self._failed(
                Failure(stage="restore", error=error, run=run, host=self.host, operation="restore")
            )
        report = RestoreReport(
            cells=tuple(results[n] for n in names if n in results),
            duration=time.monotonic() - started,
            error=error,
        )
        self._notify("cellvault_after_restore", report=report)
        log.info("restore.finished", run=run, ok=report.ok, duration=round(report.duration, 3))
        self._emit("restore.finished", run, ok=report.ok)
        return report

    def _plan(
        self, name: str, selector: Selector, sources: builtins.list[Target], into: Path | None
    ) -> _Plan:
        if into is None:
            cell = self.config.cell(name)
        else:
            cell = next((c for c in self.config.cells if c.name == name), None) or _placeholder(
                name
            )
        candidates: dict[ArchiveId, Target] = {}
        errors = []
        for target in sources:
            try:
                for ident in target.archive_ids(name):
                    candidates.setdefault(ident, target)
            except TargetError as exc:
                errors.append(str(exc))
        matching = sorted(i for i in candidates if selector.matches(i))
        if not matching:
            raise ArchiveNotFound(
                f"no archive of cell {name} matches {selector}"
                + (
                    f" (and {len(errors)} target(s) could not be read: {errors[0]})"
                    if errors
                    else ""
                ),
                hint=_nearest(sorted(candidates), selector),
            )
        ident = self._prefer_scheduled(matching, candidates, selector)
        # Read from the first target that holds the archive and its whole chain.
        last_error: CellvaultError | None = None
        for target in sources:
            try:
                ids = set(target.archive_ids(name))
            except TargetError as exc:
                last_error = exc
                continue
            if ident not in ids:
                continue
            sidecar = target.sidecar(ident)
            try:
                manifest = target.manifest(sidecar)
            except ArchiveCorrupt as exc:
                last_error = exc
                continue
            missing = sorted(h for h in manifest.holders() if ArchiveId.parse(h) not in ids)
            if missing:
                last_error = ArchiveNotFound(
                    f"archive {ident} on target {target.name} needs archive {missing[0]} of its chain, "
                    "which is missing there",
                    hint="restore from a target that has the whole chain, or pick another date",
                )
                continue
            roots = dict(sidecar.meta.roots)
            if into is None:
                unknown = sorted(set(roots) - set(cell.roots))
                if unknown:
                    raise RestoreError(
                        f"archive {ident} holds path {roots[unknown[0]]}, which cell {name} no longer has",
                        hint="restore it into another directory with --into",
                    )
                dests = {r: cell.roots[r] for r in roots}
            else:
                dests = {r: into / name / r for r in roots}
            chain = [
                target.sidecar(ArchiveId.parse(h))
                for h in sorted(manifest.holders() - {str(ident)})
            ]
            return _Plan(cell, sidecar, manifest, target, chain, dests)
        assert last_error is not None
        raise last_error

    @staticmethod
    def _prefer_scheduled(
        matching: builtins.list[ArchiveId], where: dict[ArchiveId, Target], selector: Selector
    ) -> ArchiveId:
        """The newest match that is not a pre-restore safety backup, if there is one.

        A restore's safety backup holds the data the restore replaced. Picked
        by ``latest`` or a date, it would bring that data back on a second run
        of the same restore; it is restored only when named by its id (or when
        nothing else matches).
        """
        if selector.kind == "id":
            return matching[-1]
        for ident in reversed(matching):
            try:
                if where[ident].sidecar(ident).meta.reason != "pre-restore":
                    return ident
            except CellvaultError:
                return ident  # let planning report what is wrong with it
        return matching[-1]

    def _stage(self, plan: _Plan, run: str, allow_external_links: bool) -> Swap | CellRestore:
        started = time.monotonic()
        name = plan.cell.name
        swap: Swap | None = None
        stage = "staging"
        try:
            swap = Swap.create(plan.dests, str(plan.sidecar.id))
            stage = "fetch"
            tree = StagedTree(
                staging=swap.staging,
                manifest=plan.manifest,
                archive=str(plan.sidecar.id),
                allow_external_links=allow_external_links,
            )
            tree.prepare()
            for sidecar in [*plan.chain, plan.sidecar]:
                with plan.target.open_archive(sidecar) as raw:
                    tree.take(ArchiveStream(raw, sidecar, plan.target.name))
                self._emit(
                    "restore.fetched",
                    run,
                    cell=name,
                    archive=str(sidecar.id),
                    target=plan.target.name,
                )
            stage = "check"
            tree.finish()
            swap.place()
            stage = "hook"
            self.plugins.hook.cellvault_restore_cell(
                cell=plan.cell, meta=plan.sidecar.meta, staging=swap.staging
            )
        except Exception as exc:
            if swap is not None:
                swap.discard()
            error = _error_text(exc)
            if not isinstance(exc, CellvaultError):
                log.exception("restore.crashed", cell=name, stage=stage)
            self._failed(
                Failure(
                    stage="restore",
                    error=error,
                    cell=name,
                    target=plan.target.name,
                    archive=str(plan.sidecar.id),
                    run=run,
                    host=self.host,
                    operation="restore",
                )
            )
            return CellRestore(
                cell=name,
                ok=False,
                archive=str(plan.sidecar.id),
                target=plan.target.name,
                stage=stage,
                error=error,
                duration=time.monotonic() - started,
            )
        assert swap is not None
        swap.files, swap.bytes, swap.duration = tree.files, tree.bytes, time.monotonic() - started
        return swap


@attrs.frozen
class _Plan:
    cell: Cell
    sidecar: Sidecar
    manifest: Manifest
    target: Target
    chain: list[Sidecar]
    dests: dict[str, Path]


def _placeholder(name: str) -> Cell:
    """A cell known only from its archives (restored with ``into``)."""
    return Cell(name, [f"/{name}"])


def _nearest(ids: list[ArchiveId], selector: Selector) -> str:
    if not ids:
        return (
            "there is no archive of this cell on any target; check the cell name and BACKUP_TARGETS"
        )
    if selector.kind == "before" and selector.before is not None:
        pivot = selector.before
    elif selector.kind == "prefix":
        digits = selector.text.replace("_", "")
        full = digits + "20000101000000"[len(digits) :]
        pivot = dt.datetime.strptime(full, "%Y%m%d%H%M%S").replace(tzinfo=dt.UTC)
    elif selector.kind == "id":
        pivot = ArchiveId.parse(selector.text).when
    else:
        pivot = ids[-1].when
    nearest = sorted(ids, key=lambda i: abs((i.when - pivot).total_seconds()))[:3]
    return "nearest available: " + ", ".join(str(i) for i in sorted(nearest))


def iter_failures(report: BackupReport) -> Iterator[str]:
    """Lines naming each failure of a backup report, for people."""
    for cell in report.cells:
        if cell.ok:
            continue
        failed = [o for o in cell.targets if not o.ok]
        for outcome in failed:
            yield f"cell {cell.cell}: {outcome.stage} to target {outcome.target} failed: {outcome.error}"
        # The cell's own failure (pack, hook, ...), unless it is one of the targets' above.
        if cell.error not in {_target_error(o.target, o.error) for o in failed}:
            yield f"cell {cell.cell}: {cell.stage} failed: {cell.error}"
