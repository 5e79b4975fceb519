"""The façade a platform service or the command line holds: a :class:`Vault`.

A vault is cells + targets + policies. Its methods run whole operations and
return reports; they never print, never exit and never configure logging.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import functools
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar, cast

import attrs
import pluggy
import structlog

from ._version import __version__
from .archive import ArchiveId, ArchiveMeta, Selector, Sidecar, parse_stamp, utcnow
from .cell import Cell, validate_cell_name
from .codec import Codec, get_codec
from .config import Config, load_env, load_toml
from .dumpers.base import DUMPS_ROOT, Dumper, DumpError, load_staged_dumps
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
from .hooks import ScriptHooks
from .lock import Lease
from .log import get_logger, redact_text
from .manifest import Manifest
from .notify import alert_settings
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
from .runlog import RunLog, carry, prune_logs
from .state import StateFile, slot
from .status import StatusReport, build_status
from .swap import Swap
from .targets.base import Target
from .verify import LEVELS, compare_tree, content_checksums, quick_check, read_check

__all__ = ["ArchiveInfo", "Vault"]

log = get_logger(__name__)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _current_run() -> str:
    """The id of the run the calling method belongs to (bound by :func:`_run`)."""
    run = structlog.contextvars.get_contextvars().get("run")
    return str(run) if run else secrets.token_hex(6)


def _run(
    operation: str,
) -> Callable[[Callable[Concatenate[Vault, _P], _R]], Callable[Concatenate[Vault, _P], _R]]:
    """Run a :class:`Vault` method as one run: its own id, run log and end-of-run work.

    The run id is bound in structlog's context (so every event of the run
    carries it, and :func:`_current_run` finds it); the run log
    ``<backup_dir>/logs/<operation>_<stamp>.log`` is open for its duration.
    Afterwards the metrics file is rewritten, old run logs are pruned (after
    backups) and ``cellvault_run_finished`` is called.
    """

    def wrap(method: Callable[Concatenate[Vault, _P], _R]) -> Callable[Concatenate[Vault, _P], _R]:
        @functools.wraps(method)
        def run_method(self: Vault, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            run = secrets.token_hex(6)
            stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
            with (
                RunLog(self.config.backup_dir / "logs", operation, run, stamp),
                structlog.contextvars.bound_contextvars(run=run),
            ):
                report = method(self, *args, **kwargs)
                self._finish_run(operation, report)
            return report

        return cast("Callable[Concatenate[Vault, _P], _R]", run_method)

    return wrap


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
        if config.hooks_dir is not None or config.restore_hooks_dir is not None:
            # The seed's restore_hook_<cell>.sh and siblings: a plugin bound to this config.
            self.plugins.register(
                ScriptHooks(config.hooks_dir, config.restore_hooks_dir, config.hook_timeout),
                name="cellvault.hooks",
            )
        #: Each configured cell's dumpers, built (and so checked) once, by the dumper plugins.
        self.dumpers: dict[str, tuple[Dumper, ...]] = {
            cell.name: self._make_dumpers(cell) for cell in config.cells
        }
        self._stamp_lock = threading.Lock()
        # Alert settings are read at every alert: a mistake must show now, not then.
        alert_settings(config)
        #: What status and metrics remember between runs.
        self.state = StateFile(config.backup_dir)

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

    def _make_dumpers(self, cell: Cell) -> tuple[Dumper, ...]:
        out: list[Dumper] = []
        for item in cell.dumpers:
            if isinstance(item, Dumper):
                out.append(item)
                continue
            dumper = self.plugins.hook.cellvault_make_dumper(spec=item)
            if dumper is None:
                raise ConfigError(
                    f"cell {cell.name}: no dumper type handles dumper {item.display()}",
                    hint="built-in types: command, mysql, postgres, redis, sqlite; "
                    "or install the plugin that provides it",
                )
            out.append(dumper)
        return tuple(out)

    def _after_snapshot(self, cell: Cell, ident: ArchiveId, run: str, error: str | None) -> None:
        """Run the after-snapshot hooks (resume writers); a failure is alerted, never fatal."""
        hook = self.plugins.hook.cellvault_after_snapshot
        for impl in reversed(hook.get_hookimpls()):
            args = {"cell": cell, "archive": str(ident), "error": error}
            try:
                impl.function(*(args[name] for name in impl.argnames))
            except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
                self._failed(
                    Failure(
                        stage="hook",
                        error=f"after-snapshot hook of {impl.plugin_name} failed: {_error_text(exc)}",
                        cell=cell.name,
                        archive=str(ident),
                        run=run,
                        host=self.host,
                    )
                )

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
        self._notify("cellvault_backup_failed", failure=failure, config=self.config)

    def _finish_run(self, operation: str, report: Any) -> None:
        """End-of-run work of :func:`_run`: metrics, log pruning, the run-finished hook."""
        if self.config.metrics_file is not None and operation in ("backup", "verify"):
            self.write_metrics()
        if operation == "backup":
            try:
                removed = prune_logs(
                    self.config.backup_dir / "logs", keep_days=self.config.log_keep_days
                )
            except OSError as exc:
                log.warning("runlog.prune_failed", error=_error_text(exc))
            else:
                if removed:
                    log.info("runlog.pruned", removed=[p.name for p in removed])
        self._notify(
            "cellvault_run_finished", operation=operation, report=report, config=self.config
        )

    def write_metrics(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Rewrite the Prometheus textfile (*path*, else ``metrics_file``) from the state file.

        Returns the path written, or ``None`` when none is configured or it
        could not be written (logged: metrics never fail a run).
        """
        target = Path(path) if path is not None else self.config.metrics_file
        if target is None:
            return None
        from .metrics import write_textfile

        try:
            write_textfile(target, self.state.read())
        except OSError as exc:
            log.warning("metrics.unwritable", path=str(target), error=_error_text(exc))
            return None
        log.info("metrics.written", path=str(target))
        return target

    def _record_backup(self, report: BackupReport, targets: Sequence[Target]) -> None:
        """Remember each cell's outcome on each target, for status and metrics."""
        at = parse_stamp(report.stamp).timestamp()
        checked = time.time()
        level = self.config.verify_level

        def change(data: dict[str, Any]) -> None:
            for cell in report.cells:
                outcomes = {o.target: o for o in cell.targets}
                for target in targets:
                    entry = slot(data, cell.cell, target.name)
                    outcome = outcomes.get(target.name)
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
                    if outcome is not None and (outcome.verified or outcome.stage == "verify"):
                        entry.setdefault("verify", {})[level] = {
                            "ok": outcome.verified,
                            "at": checked,
                            "archive": cell.archive,
                            "error": None if outcome.verified else outcome.error,
                        }

        self.state.update(change)

    def _record_verify(self, results: Sequence[tuple[str, VerifyResult]]) -> None:
        """Remember the last result of each verify level (and drill) per cell and target."""
        checked = time.time()

        def change(data: dict[str, Any]) -> None:
            for cell, result in results:
                entry = slot(data, cell, result.target)
                record = {
                    "ok": result.ok,
                    "at": checked,
                    "archive": result.archive if ArchiveId.is_id(result.archive) else None,
                    "error": result.error,
                    "duration": round(result.duration, 3),
                }
                if result.level == "drill":
                    entry["drill"] = record | {
                        "rto": None if result.rto is None else round(result.rto, 3),
                        "files": result.files,
                        "bytes": result.bytes,
                    }
                else:
                    entry.setdefault("verify", {})[result.level] = record

        self.state.update(change)

    def status(
        self,
        cells: Sequence[str] | None = None,
        *,
        targets: Sequence[str] | None = None,
        max_age: float | None = None,
    ) -> StatusReport:
        """Whether every cell has a fresh, verified backup on every target.

        For each cell and target: the newest committed archive and its age
        (the RPO), and the last verify, quick, full and drill results
        remembered from earlier runs. A cell is not ok on a target when its
        newest archive is older than *max_age* hours (default: the config's
        ``max_age``, 26), when there is none, or when its last verify failed.
        Lists the targets; reads no archive.
        """
        if cells:
            names = self._known_cells(cells)
        else:
            # Configured cells: a retired cell's old archives must not fail status forever.
            names = [c.name for c in self.config.cells] or self._all_cells()
        tgts = [self.target(n) for n in targets] if targets else builtins.list(self.targets)
        limit = self.config.max_age if max_age is None else max_age
        if not limit > 0:
            raise ConfigError(f"max_age must be more than 0 hours, not {limit}")
        return build_status(names, tgts, self.state.read(), now=self._now(), max_age=limit)

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

    @_run("backup")
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
        Each run writes ``<backup_dir>/logs/backup_<stamp>.log`` and is
        remembered per cell and target for :meth:`status` and the metrics.
        """
        kind = kind or self.config.backup_type
        if kind not in ("full", "incremental"):
            raise ConfigError(f"backup kind {kind!r} is neither full nor incremental")
        chosen = self._cells(cells)
        tgts = [self.target(n) for n in targets] if targets else list(self.targets)
        run = _current_run()
        started = time.monotonic()
        with self._stamp_lock:
            when = self._next_stamp(chosen, tgts)
        stamp = when.strftime("%Y%m%d_%H%M%S")
        log.info("backup.started", run=run, stamp=stamp, kind=kind, cells=[c.name for c in chosen])
        self._emit("backup.started", run, stamp=stamp, kind=kind, cells=[c.name for c in chosen])
        with ThreadPoolExecutor(max_workers=self.config.jobs, thread_name_prefix="cell") as pool:
            reports = list(
                pool.map(
                    carry(
                        lambda c: self._backup_cell(  # type: ignore[misc]
                            c, ArchiveId(c.name, when), kind, tgts, run, reason
                        )
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
        self._record_backup(report, tgts)
        return report

    def _backup_cell(
        self, cell: Cell, ident: ArchiveId, kind: str, targets: list[Target], run: str, reason: str
    ) -> CellReport:
        started = time.monotonic()
        blog = log.bind(run=run, cell=cell.name, archive=str(ident))
        stage = "lock"
        leases: list[Lease] = []
        # Set once the before-backup hooks ran: the after-snapshot hooks then must too.
        snapshot_pending = False
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
            snapshot_pending = True
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
                dumpers=self.dumpers.get(cell.name, ()),
            )
            result = packer.pack()
            snapshot_pending = False
            self._after_snapshot(cell, ident, run, None)
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
                # What the stores report on HEAD, for quick verifies (one read of the spool file).
                checksums=content_checksums(
                    result.data_path, set().union(*(t.stat_checksums for t in live))
                ),
            )
            stage = "upload"
            with ThreadPoolExecutor(max_workers=len(live), thread_name_prefix="store") as pool:
                stored = list(
                    pool.map(
                        carry(
                            functools.partial(self._store, result=result, sidecar=sidecar, run=run)
                        ),
                        live,
                    )
                )
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
                dumps=result.dumps,
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
            if isinstance(exc, DumpError):
                stage = "dump"
            if snapshot_pending:
                self._after_snapshot(cell, ident, run, error)
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
                committed = set(target.archive_ids(sidecar.id.cell))
                if self.config.verify_level == "quick":
                    quick_check(target, sidecar, committed)
                elif self.config.verify_level == "read":
                    # The manifest copy must be, byte for byte, the one this run wrote.
                    copy = result.manifest_path.read_bytes()
                    read_check(
                        target, sidecar, committed, manifest_copy=copy, manifest=result.manifest
                    )
                else:
                    self._verify_one(target, sidecar, committed)
                verified = True
                log.info(
                    "archive.verified",
                    run=run,
                    cell=sidecar.id.cell,
                    archive=ident,
                    target=target.name,
                    verify_level=self.config.verify_level,
                )
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

    def _verify_one(
        self, target: Target, sidecar: Sidecar, committed: set[ArchiveId] | None = None
    ) -> int:
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
        if committed is None:
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

    @_run("verify")
    def verify(
        self,
        cells: Sequence[str] | None = None,
        *,
        targets: Sequence[str] | None = None,
        select: str | Selector = "latest",
        all_archives: bool = False,
        level: str = "full",
    ) -> VerifyReport:
        """Check archives on each target, at one of four levels.

        By default the latest archive of each cell on each target; with
        *all_archives*, every committed one (not for drills).

        * ``quick`` reads no data: the sidecar is there, the stored object has
          the recorded size and, where the store reports one on HEAD (OSS's
          CRC-64, an S3 single-part ETag), the recorded checksum; the manifest
          copy and an incremental's chain are committed there.
        * ``read`` reads each archive once without unpacking it: the sha256
          against the sidecar, the data decompressed to its end (the codec's
          checksum of every byte), ``meta.json`` with ``backed_at``, the tar's
          end blocks, the manifest copy and the chain
          (:func:`cellvault.verify.read_check`); the check after each backup
          by default.
        * ``full`` reads each archive back: the sha256 against the sidecar,
          every member against the manifest, ``backed_at`` in ``meta.json``,
          and that an incremental's chain is committed there.
        * ``drill`` restores the archive (and its chain) from each target into
          a scratch directory under the backup directory, compares the tree
          with the manifest, runs the ``cellvault_health_check`` hooks, and
          reports the time it took (``rto``); the scratch copy is removed.

        Each result is remembered per cell and target for :meth:`status`;
        failures go to the ``cellvault_backup_failed`` hook (operation
        ``verify``).
        """
        if level not in LEVELS:
            raise ConfigError(
                f"unknown verify level {level!r}", hint=f"use one of {', '.join(LEVELS)}"
            )
        selector = select if isinstance(select, Selector) else Selector.parse(select)
        if cells:
            names = self._known_cells(cells)
        else:
            names = [c.name for c in self.config.cells] or self._all_cells()
        tgts = [self.target(n) for n in targets] if targets else list(self.targets)
        run = _current_run()
        started = time.monotonic()
        log.info(
            "verify.started",
            run=run,
            verify_level=level,
            cells=names,
            targets=[t.name for t in tgts],
        )
        results: builtins.list[tuple[str, VerifyResult]] = []
        for target in tgts:
            for cell in names:
                if level == "drill":
                    results.append((cell, self._drill(target, cell, selector, run)))
                    continue
                try:
                    sidecars = target.archives(cell)
                except TargetError as exc:
                    self._failed(
                        Failure(
                            stage="verify",
                            error=str(exc),
                            cell=cell,
                            target=target.name,
                            run=run,
                            host=self.host,
                            operation="verify",
                        )
                    )
                    results.append(
                        (
                            cell,
                            VerifyResult(
                                archive=f"cell_{cell}",
                                target=target.name,
                                ok=False,
                                level=level,
                                error=str(exc),
                            ),
                        )
                    )
                    continue
                committed = {s.id for s in sidecars}
                chosen = [s for s in sidecars if selector.matches(s.id)]
                if not all_archives:
                    chosen = chosen[-1:]
                for sidecar in chosen:
                    results.append(
                        (cell, self._verify_result(target, sidecar, run, level, committed))
                    )
        self._record_verify(results)
        report = VerifyReport(
            results=tuple(r for _, r in results),
            level=level,
            run=run,
            duration=time.monotonic() - started,
        )
        log.info(
            "verify.finished",
            run=run,
            verify_level=level,
            ok=report.ok,
            duration=round(report.duration, 3),
        )
        return report

    def _verify_result(
        self,
        target: Target,
        sidecar: Sidecar,
        run: str,
        level: str = "full",
        committed: set[ArchiveId] | None = None,
    ) -> VerifyResult:
        started = time.monotonic()
        checks: tuple[str, ...] = ()
        members = 0
        try:
            if committed is None:
                committed = set(target.archive_ids(sidecar.id.cell))
            if level == "quick":
                checks = quick_check(target, sidecar, committed)
            elif level == "read":
                checks = read_check(target, sidecar, committed)
            else:
                members = self._verify_one(target, sidecar, committed)
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
                level=level,
                error=str(exc),
                duration=time.monotonic() - started,
            )
        log.info(
            "verify.ok",
            run=run,
            verify_level=level,
            cell=sidecar.id.cell,
            archive=str(sidecar.id),
            target=target.name,
            members=members,
            checks=builtins.list(checks),
        )
        return VerifyResult(
            archive=str(sidecar.id),
            target=target.name,
            ok=True,
            level=level,
            members=members,
            checks=checks,
            duration=time.monotonic() - started,
        )

    def _drill(self, target: Target, cell: str, selector: Selector, run: str) -> VerifyResult:
        """Restore *cell* from *target* into a scratch directory, check it, time it, remove it."""
        started = time.monotonic()
        scratch = self.config.backup_dir / ".cellvault" / "drill" / f"{run}-{target.name}-{cell}"
        archive = f"cell_{cell}"
        step = "plan"
        try:
            plan = self._plan(cell, selector, [target], scratch)
            archive = str(plan.sidecar.id)
            root = scratch / cell
            step = "fetch"
            tree = StagedTree(staging=root, manifest=plan.manifest, archive=archive)
            tree.prepare()
            for sidecar in [*plan.chain, plan.sidecar]:
                with target.open_archive(sidecar) as raw:
                    tree.take(ArchiveStream(raw, sidecar, target.name))
            step = "check"
            tree.finish()
            compared = compare_tree(root, plan.manifest)
            step = "health check"
            # The hook spec may come from a newer cellvault than a plugin manager built by hand.
            if hasattr(self.plugins.hook, "cellvault_health_check"):
                self.plugins.hook.cellvault_health_check(
                    cell=plan.cell, meta=plan.sidecar.meta, root=root
                )
            rto = time.monotonic() - started
        except Exception as exc:
            # A health check that raises is a verdict on the data, not a crash.
            if not isinstance(exc, CellvaultError) and step != "health check":
                log.exception("drill.crashed", run=run, cell=cell, target=target.name, step=step)
            error = f"drill failed at {step}: {_error_text(exc)}"
            self._failed(
                Failure(
                    stage="drill",
                    error=error,
                    cell=cell,
                    target=target.name,
                    archive=archive if ArchiveId.is_id(archive) else None,
                    run=run,
                    host=self.host,
                    operation="verify",
                )
            )
            return VerifyResult(
                archive=archive,
                target=target.name,
                ok=False,
                level="drill",
                error=error,
                duration=time.monotonic() - started,
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                scratch.parent.rmdir()
        log.info(
            "drill.ok",
            run=run,
            cell=cell,
            target=target.name,
            archive=archive,
            files=tree.files,
            bytes=tree.bytes,
            paths=compared,
            rto=round(rto, 3),
        )
        return VerifyResult(
            archive=archive,
            target=target.name,
            ok=True,
            level="drill",
            members=compared,
            files=tree.files,
            bytes=tree.bytes,
            rto=rto,
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
        if not dry_run:
            # Run logs go with the archives (the newest of each kind always stay).
            try:
                prune_logs(self.config.backup_dir / "logs", keep_days=self.config.log_keep_days)
            except OSError as exc:
                log.warning("runlog.prune_failed", error=_error_text(exc))
        return PruneReport(results=tuple(results), dry_run=dry_run)

    @_run("restore")
    def restore(
        self,
        select: str | Selector = "latest",
        *,
        cells: Sequence[str] | None = None,
        into: str | os.PathLike[str] | None = None,
        skip_prebackup: bool = False,
        source: Sequence[str] | None = None,
        allow_external_links: bool = False,
        load_dumps: bool | Sequence[str] | None = None,
        dump_options: Mapping[str, Mapping[str, Any]] | None = None,
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

        Dumps (``docs/dumpers.md``) are extracted and checked with the files.
        Once every cell is staged, each cell's dumps are loaded, then its
        restore hooks run (``cellvault_restore_cell``, ``restore_hook_<cell>.sh``),
        one cell after the other, all before any swap: a load or hook that
        fails leaves every cell's files as they were. *load_dumps*: ``None``
        loads the dumps of the dumpers with ``autoload`` when restoring in
        place, none with *into* (their files are kept in ``<into>/<cell>.dumps/``);
        ``False`` loads none, ``True`` the autoload ones even with *into*, a
        list of dumper names exactly those. *dump_options* (dumper name ->
        options) changes a dumper's options for this restore, e.g.
        ``{"pg": {"tables": ["public.orders"]}}``. After the swap, the
        ``cellvault_health_check`` hooks (``health_check_<cell>.sh``) run.
        """
        selector = select if isinstance(select, Selector) else Selector.parse(select)
        started = time.monotonic()
        run = _current_run()
        into_path = Path(into).expanduser().absolute() if into is not None else None
        sources = [self.target(n) for n in source] if source else list(self.targets)
        names = list(dict.fromkeys(cells)) if cells else [c.name for c in self._cells(None)]
        plans = [self._plan(name, selector, sources, into_path) for name in names]
        wanted = set(dump_options or {}) | (
            set(load_dumps) if not isinstance(load_dumps, bool | None) else set()
        )
        known = {d.name for p in plans for d in self.dumpers.get(p.cell.name, ())}
        if wanted - known:
            raise ConfigError(
                f"no cell being restored has a dumper named {sorted(wanted - known)[0]!r}",
                hint=f"their dumpers: {', '.join(sorted(known)) or 'none'}",
            )
        for plan in plans:  # a bad option must fail before anything is touched
            for dumper in self.dumpers.get(plan.cell.name, ()):
                dumper.with_options((dump_options or {}).get(dumper.name, {}))
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
                    pool.map(
                        carry(
                            functools.partial(
                                self._stage,
                                run=run,
                                allow_external_links=allow_external_links,
                                into=into_path,
                            )
                        ),
                        plans,
                    )
                )
            for plan, outcome in zip(plans, outcomes, strict=True):
                if isinstance(outcome, CellRestore):
                    results[plan.cell.name] = outcome
                else:
                    staged.append((plan, outcome))
            if len(staged) == len(plans):
                # Every cell is extracted and checked: load dumps and run the restore
                # hooks, cell by cell, stopping at the first that fails.
                only = _dump_choice(load_dumps, into_path)
                for plan, swap in staged:
                    refused = self._prepare(plan, swap, run, only, dump_options or {})
                    if refused is not None:
                        results[plan.cell.name] = refused
                        break
            if len(staged) == len(plans) and not results:
                # Everything is staged, loaded and hooked: only now touch live data.
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
                    health = self._health_check(plan, run, into_path)
                    results[plan.cell.name] = CellRestore(
                        cell=plan.cell.name,
                        ok=health is None,
                        archive=str(plan.sidecar.id),
                        target=plan.target.name,
                        destination=tuple(str(d) for d in swap.dests.values()),
                        safety_backup=safety.get(plan.cell.name),
                        stage=None if health is None else "health",
                        error=health,
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
                    if plan.cell.name in results:
                        continue  # the cell whose load or hook failed
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

    def _restore_failure(self, plan: _Plan, run: str, stage: str, error: str) -> Failure:
        """The alert of a restore failure of *plan*'s cell at *stage*."""
        return Failure(
            stage=stage,
            error=error,
            cell=plan.cell.name,
            target=plan.target.name,
            archive=str(plan.sidecar.id),
            run=run,
            host=self.host,
            operation="restore",
        )

    def _restore_failed(
        self, plan: _Plan, run: str, stage: str, exc: BaseException, duration: float
    ) -> CellRestore:
        """Report and alert one cell's failed restore (nothing live was touched)."""
        name = plan.cell.name
        error = _error_text(exc)
        if not isinstance(exc, CellvaultError):
            log.exception("restore.crashed", cell=name, stage=stage)
        self._failed(self._restore_failure(plan, run, "restore", error))
        return CellRestore(
            cell=name,
            ok=False,
            archive=str(plan.sidecar.id),
            target=plan.target.name,
            stage=stage,
            error=error,
            duration=duration,
        )

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

    def _stage(
        self, plan: _Plan, run: str, allow_external_links: bool, into: Path | None = None
    ) -> Swap | CellRestore:
        started = time.monotonic()
        name = plan.cell.name
        swap: Swap | None = None
        stage = "staging"
        try:
            dests = dict(plan.dests)
            has_dumps = any(e.path.startswith(f"{DUMPS_ROOT}/") for e in plan.manifest)
            if has_dumps and into is not None:
                # Restored elsewhere, the dumps are kept beside the cell's folder.
                dests[_DUMPS_STAGE] = into / f"{name}.dumps"
            swap = Swap.create(dests, str(plan.sidecar.id))
            stage = "fetch"
            tree = StagedTree(
                staging=swap.staging,
                manifest=plan.manifest,
                archive=str(plan.sidecar.id),
                allow_external_links=allow_external_links,
                dumps=swap.staging / _DUMPS_STAGE if has_dumps else None,
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
        except Exception as exc:  # noqa: BLE001 - reported and alerted by _restore_failed
            if swap is not None:
                swap.discard()
            return self._restore_failed(plan, run, stage, exc, time.monotonic() - started)
        assert swap is not None
        swap.files, swap.bytes, swap.duration = tree.files, tree.bytes, time.monotonic() - started
        return swap

    def _prepare(
        self,
        plan: _Plan,
        swap: Swap,
        run: str,
        only: Sequence[str] | None,
        options: Mapping[str, Mapping[str, Any]],
    ) -> CellRestore | None:
        """Load a staged cell's dumps, then run its restore hooks; return its failure, if any."""
        started = time.monotonic()
        name = plan.cell.name
        dumpers = self.dumpers.get(name, ())
        mine = {d.name for d in dumpers}
        dumps = swap.placed.get(_DUMPS_STAGE, swap.staging / _DUMPS_STAGE)
        scratch = swap.staging / ".cellvault-load"
        stage = "load"
        try:
            loaded = load_staged_dumps(
                cell=plan.cell,
                meta=plan.sidecar.meta,
                dumpers=dumpers,
                dumps=dumps,
                spool=scratch,
                only=None if only is None else [n for n in only if n in mine],
                options={k: v for k, v in options.items() if k in mine},
                staged_roots={
                    plan.cell.roots[r]: swap.placed.get(r, swap.staging / r)
                    for r in plan.dests
                    if r in plan.cell.roots
                },
            )
            shutil.rmtree(scratch, ignore_errors=True)
            if loaded:
                self._emit(
                    "restore.loaded", run, cell=name, archive=str(plan.sidecar.id), dumps=loaded
                )
            stage = "hook"
            self.plugins.hook.cellvault_restore_cell(
                cell=plan.cell, meta=plan.sidecar.meta, staging=swap.staging, dumps=dumps
            )
        except Exception as exc:  # noqa: BLE001 - reported and alerted by _restore_failed
            shutil.rmtree(scratch, ignore_errors=True)
            return self._restore_failed(
                plan, run, stage, exc, swap.duration + time.monotonic() - started
            )
        swap.duration += time.monotonic() - started
        return None

    def _health_check(self, plan: _Plan, run: str, into: Path | None) -> str | None:
        """Run the health-check hooks on a restored cell; return the failure, if any."""
        hook = self.plugins.hook.cellvault_health_check
        if not hook.get_hookimpls():
            return None
        name = plan.cell.name
        links: Path | None = None
        if into is not None:
            root = into / name
        else:
            # The hook sees root/<root name> for each path, as in a drill: links to the live paths.
            links = root = self.config.backup_dir / ".cellvault" / "health" / f"{run}-{name}"
            root.mkdir(parents=True)
            for rname, dest in plan.dests.items():
                (root / rname).symlink_to(dest)
        try:
            hook(cell=plan.cell, meta=plan.sidecar.meta, root=root)
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
            error = f"health check failed after the restore: {_error_text(exc)}"
            self._failed(self._restore_failure(plan, run, "health", error))
            return error
        finally:
            if links is not None:
                shutil.rmtree(links, ignore_errors=True)
                with contextlib.suppress(OSError):
                    links.parent.rmdir()
        log.info("restore.healthy", run=run, cell=name, archive=str(plan.sidecar.id))
        return None


#: The staged dumps' folder inside a cell's staging directory.
_DUMPS_STAGE = ".cellvault-dumps"


def _dump_choice(load: bool | Sequence[str] | None, into: Path | None) -> Sequence[str] | None:
    """Which dumps a restore loads: ``None`` the autoload ones, else exactly those named."""
    if load is None:
        return None if into is None else ()
    if load is True:
        return None
    if load is False:
        return ()
    return list(load)


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
