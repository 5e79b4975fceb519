"""One run of an operation: its id, host, run log, events, failures and alerts.

Every operation (backup, verify, restore, prune, a DR sync, ...) is one
:class:`Run`, opened once by the façade that starts it with :func:`open_run`
and handed to the operation's functions. The run owns what every operation
did by hand before: the run id bound into every structlog event of the run
(so deeper layers' events land in its run log), ``emit`` for the caller's
``on_event``, ``fail`` for a failure that is logged and alerted, ``notify``
for the notification hooks, and the end-of-run work (metrics, log pruning,
``cellvault_run_finished``).
"""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import attrs
import pluggy
import structlog

from .errors import CellvaultError
from .events import Event
from .layout import BackupDirLayout
from .log import get_logger, redact_text
from .plugins import call_each
from .progress import Meter
from .report import Failure
from .runlog import RunLog, prune_logs

if TYPE_CHECKING:
    from .config import Config

__all__ = ["Run", "Where", "error_text", "new_run_id", "notify", "open_run"]

log = get_logger(__name__)


class Where(TypedDict, total=False):
    """Where a failure happened: what :meth:`Run.failure` takes besides stage and error."""

    cell: str | None
    target: str | None
    archive: str | None
    operation: str | None


def new_run_id() -> str:
    """A fresh run id: 12 hex digits."""
    return secrets.token_hex(6)


def error_text(exc: BaseException) -> str:
    """What a report or an alert says of *exc*: its message, redacted unless it is ours."""
    if isinstance(exc, CellvaultError):
        return str(exc)
    return redact_text(f"{type(exc).__name__}: {exc}")


@attrs.define
class Run:
    """The context of one operation's run; see the module's text.

    *operation* is the run's kind (``backup``, ``verify``, ``restore``,
    ``prune``, ``sync``, ...): the run log's first word and the
    ``operation`` of the failures it reports.
    """

    operation: str
    id: str
    host: str
    config: Config
    plugins: pluggy.PluginManager
    on_event: Callable[[Event], None] | None = None
    #: The run's log file, while it is open.
    runlog: RunLog | None = None
    started: float = attrs.field(factory=time.monotonic)
    #: How far the run has come (see :meth:`expect` and :meth:`advance`).
    meter: Meter | None = None
    _progress_emitted: float = attrs.field(init=False, default=0.0)
    _progress_logged: float = attrs.field(init=False, default=0.0)
    _progress_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    @property
    def layout(self) -> BackupDirLayout:
        return BackupDirLayout(self.config.backup_dir)

    def emit(self, name: str, **fields: Any) -> None:
        """Hand the event *name* to the caller's ``on_event``; a callback that fails is logged."""
        if self.on_event is None:
            return
        data = {k: v for k, v in fields.items() if k not in ("cell", "target", "archive")}
        event = Event(
            name,
            self.id,
            cell=fields.get("cell"),
            target=fields.get("target"),
            archive=fields.get("archive"),
            data=data,
        )
        try:
            self.on_event(event)
        except Exception as exc:  # noqa: BLE001 - a caller's callback must not break a run
            log.warning("event.callback_failed", event_name=name, error=error_text(exc))

    def expect(
        self,
        *,
        cells: int = 0,
        bytes: int = 0,
        files: int = 0,
        cell: str | None = None,
        unit: str = "cells",
    ) -> Meter:
        """Add to the totals of this run's :class:`~cellvault.progress.Meter` (made on first use).

        *unit* names what the meter counts as one "cell" (see :attr:`Meter.unit`);
        it is fixed by the first call.
        """
        if self.meter is None:
            self.meter = Meter(self.operation, unit=unit)
            self._progress_logged = self.meter.started
        self.meter.expect(cells=cells, bytes=bytes, files=files, cell=cell)
        return self.meter

    def advance(
        self,
        cell: str,
        *,
        bytes: int | None = None,
        files: int | None = None,
        add: bool = False,
        finished: bool = False,
    ) -> None:
        """Count *cell*'s progress: running totals (or increments, with *add*).

        Emits a ``progress`` event (a :meth:`Meter.snapshot`: done and total
        cells, bytes and files, fraction, rate, ETA) at most every 0.2 s and
        whenever a cell finishes, and logs ``run.progress`` with a line for
        people every ``progress_interval`` seconds.
        """
        meter = self.meter or self.expect()
        if add:
            meter.add(cell, bytes=bytes or 0, files=files or 0)
        else:
            meter.update(cell, bytes=bytes, files=files)
        if finished:
            meter.finish(cell)
        now = time.monotonic()
        interval = self.config.progress_interval
        with self._progress_lock:
            emit = finished or now - self._progress_emitted >= 0.2
            write = bool(interval) and now - self._progress_logged >= interval
            if emit:
                self._progress_emitted = now
            if write:
                self._progress_logged = now
        if emit or write:
            self._report(meter, cell, emit=emit, write=write)

    def _report(self, meter: Meter, cell: str | None, *, emit: bool, write: bool) -> None:
        snapshot = meter.snapshot()
        line = meter.line(snapshot)
        if write:
            log.info("run.progress", run=self.id, line=line, **snapshot)
        if emit:
            self.emit("progress", cell=cell, line=line, **snapshot)

    @contextlib.contextmanager
    def step(self, cell: str, text: str, *, bytes: int = 0) -> Iterator[Callable[[int], None]]:
        """A step the counts do not cover (loading *cell*'s dumps), named in the progress.

        Yields the function that counts the bytes the step reads. A
        ``progress`` event is emitted as it starts, as it reads (at most every
        0.2 s), with its last counts as it ends and without it after; in
        between, :meth:`beat` keeps the run log's line coming.
        """
        meter = self.meter or self.expect()
        meter.begin_step(text, bytes=bytes)
        self._report(meter, cell, emit=True, write=False)

        def read(n: int) -> None:
            meter.step_read(n)
            now = time.monotonic()
            with self._progress_lock:
                emit = now - self._progress_emitted >= 0.2
                if emit:
                    self._progress_emitted = now
            if emit:
                self._report(meter, cell, emit=True, write=False)

        try:
            yield read
        finally:
            self._report(meter, cell, emit=True, write=False)  # what the step read, in all
            meter.end_step()
            self._report(meter, cell, emit=True, write=False)

    def beat(self) -> None:
        """Log (and emit) the progress line if none was for ``progress_interval`` seconds.

        Called by the run's heartbeat thread (see :func:`open_run`), so that
        a step that counts nothing (a database load, a slow upload's commit)
        still shows in the run log and under cron.
        """
        meter, interval = self.meter, self.config.progress_interval
        if meter is None or not interval:
            return
        now = time.monotonic()
        with self._progress_lock:
            if now - self._progress_logged < interval:
                return
            self._progress_logged = self._progress_emitted = now
        self._report(meter, None, emit=True, write=True)

    def failure(self, stage: str, error: str, **where: Unpack[Where]) -> Failure:
        """A :class:`Failure` of this run (its id, host and operation filled in).

        *where* names the cell, target and archive (and an operation other
        than the run's own, such as ``backup`` for a restore's safety backup).
        """
        return Failure(
            stage=stage,
            error=error,
            cell=where.get("cell"),
            target=where.get("target"),
            archive=where.get("archive"),
            run=self.id,
            host=self.host,
            operation=where.get("operation") or self.operation,
        )

    def fail(self, stage: str, error: str, **where: Unpack[Where]) -> Failure:
        """Log and alert a failure of this run (see :meth:`failure`); return it."""
        failure = self.failure(stage, error, **where)
        self.alert(failure)
        return failure

    def alert(self, failure: Failure) -> None:
        """Log *failure* and send it to every ``cellvault_backup_failed`` implementation."""
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
        self.notify("cellvault_backup_failed", failure=failure, config=self.config)

    def notify(self, hook: str, **kwargs: Any) -> None:
        """Call every implementation of *hook*; log and swallow what each raises.

        For the hooks whose exceptions never change a run's result (alerts,
        after-backup and after-restore notifications).
        """
        notify(self.plugins, hook, **kwargs)

    def finish(self, report: Any, *, metrics: Callable[[], object] | None = None) -> None:
        """End-of-run work: metrics (backup, verify), run-log pruning (backup), the hook."""
        if metrics is not None and self.operation in ("backup", "verify"):
            metrics()
        if self.operation == "backup":
            try:
                removed = prune_logs(self.layout.logs, keep_days=self.config.log_keep_days)
            except OSError as exc:
                log.warning("runlog.prune_failed", error=error_text(exc))
            else:
                if removed:
                    log.info("runlog.pruned", removed=[p.name for p in removed])
        self.notify(
            "cellvault_run_finished", operation=self.operation, report=report, config=self.config
        )


def notify(plugins: pluggy.PluginManager, hook: str, **kwargs: Any) -> None:
    """Call every implementation of *hook* on its own; log what any raises (see :meth:`Run.notify`)."""
    for outcome in call_each(plugins, hook, **kwargs):
        if outcome.exception is not None:
            log.error(
                "plugin.hook_failed",
                hook=hook,
                plugin=outcome.plugin,
                error=error_text(outcome.exception),
            )


@contextlib.contextmanager
def open_run(
    operation: str,
    *,
    config: Config,
    plugins: pluggy.PluginManager,
    host: str,
    on_event: Callable[[Event], None] | None = None,
    run_log: bool = True,
) -> Iterator[Run]:
    """Open a :class:`Run` of *operation*: a fresh id bound into structlog's context.

    With *run_log* (the default), ``<backup_dir>/logs/<operation>_<stamp>.log``
    is open for the run's duration. The caller calls :meth:`Run.finish` with
    its report when the operation returned one.
    """
    run = Run(operation, new_run_id(), host, config, plugins, on_event)
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    with contextlib.ExitStack() as stack:
        if run_log:
            run.runlog = stack.enter_context(RunLog(run.layout.logs, operation, run.id, stamp))
        stack.enter_context(structlog.contextvars.bound_contextvars(run=run.id))
        if config.progress_interval:
            stack.enter_context(_heartbeat(run, config.progress_interval))
        yield run


@contextlib.contextmanager
def _heartbeat(run: Run, interval: float) -> Iterator[None]:
    """A daemon thread calling :meth:`Run.beat` while the run is open."""
    stop = threading.Event()
    every = min(max(interval / 2, 0.05), 5.0)

    def beat() -> None:
        while not stop.wait(every):
            try:
                run.beat()
            except Exception as exc:  # noqa: BLE001 - progress must never break a run
                log.warning("run.progress_failed", run=run.id, error=error_text(exc))

    thread = threading.Thread(target=beat, name=f"progress-{run.id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=10)
