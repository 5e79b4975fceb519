"""The fleet's Celery app: its settings, its tasks, and the worker that runs them.

Every task works on one cell through the worker's own :class:`~cellvault.Vault`
(its host's configuration), so everything cellvault guarantees still holds:
a backup is committed whole or not at all, under the cell's lease, and a
fenced DR site refuses to write. Tasks are acknowledged late
(``acks_late``, ``task_reject_on_worker_lost``, prefetch 1): a worker killed
mid-task leaves its task to be delivered again, and the lease keeps two
deliveries from running at once. A backup task is idempotent by (cell,
run): delivered again after its archive was committed, it reports that
archive instead of taking another.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from celery import Celery
from celery.schedules import crontab
from celery.worker.control import control_command

from ..archive import ArchiveId, Kind
from ..errors import CellvaultError, LockHeld
from ..log import get_logger
from ..run import error_text
from ..vault import Vault
from .inventory import inventory
from .settings import ANNOUNCE, CONTROL_QUEUE, FleetSettings, host_queue, pool_queue

__all__ = ["WorkerContext", "make_app", "start_worker"]

log = get_logger(__name__)

#: The task names, stable across versions (a new worker takes an old coordinator's tasks).
BACKUP_TASK = "cellvault.backup_cell"
RESTORE_TASK = "cellvault.restore_cell"
VERIFY_TASK = "cellvault.verify_cell"
PULL_TASK = "cellvault.pull_cell"
FAN_OUT_TASK = "cellvault.fan_out_backup"


@attrs.define
class WorkerContext:
    """What a worker's tasks run with: its host, its vault, and whether it serves the pool."""

    host: str
    vault: Vault
    pool: bool = False

    @property
    def cells(self) -> list[str]:
        return [c.name for c in self.vault.config.cells]


def _crontab(line: str) -> crontab:
    minute, hour, day_of_month, month, day_of_week = line.split()
    return crontab(
        minute=minute,
        hour=hour,
        day_of_month=day_of_month,
        month_of_year=month,
        day_of_week=day_of_week,
    )


def make_app(settings: FleetSettings) -> Celery:
    """The fleet's Celery app for *settings* (a worker adds its :class:`WorkerContext`)."""
    app = Celery("cellvault", broker=settings.broker_url, backend=settings.result_backend)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=CONTROL_QUEUE,
        task_track_started=True,
        result_expires=7 * 86400,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        timezone="UTC",
        beat_schedule={
            "cellvault-full": {
                "task": FAN_OUT_TASK,
                "schedule": _crontab(settings.full_schedule),
                "args": ("full",),
            },
            "cellvault-incremental": {
                "task": FAN_OUT_TASK,
                "schedule": _crontab(settings.incremental_schedule),
                "args": ("incremental",),
            },
        },
    )
    app.cellvault_settings = settings
    app.cellvault_context = None
    app.task(name=BACKUP_TASK, bind=True)(_backup_task)
    app.task(name=RESTORE_TASK, bind=True)(_restore_task)
    app.task(name=VERIFY_TASK, bind=True)(_verify_task)
    app.task(name=PULL_TASK, bind=True)(_pull_task)
    app.task(name=FAN_OUT_TASK, bind=True)(_fan_out_task)
    return app


def _context(task: Any) -> WorkerContext:
    ctx = getattr(task.app, "cellvault_context", None)
    if ctx is None:
        raise RuntimeError("this process is not a cellvault fleet worker")
    return ctx  # type: ignore[no-any-return]


def _result(ctx: WorkerContext, cell: str, started: float, **fields: Any) -> dict[str, Any]:
    return {
        "cell": cell,
        "host": ctx.host,
        "duration": round(time.monotonic() - started, 3),
        **fields,
    }


def _done_since(vault: Vault, cell: str, since: str | None) -> str | None:
    """An archive of *cell* committed at or after *since* on every target: the run's, if any."""
    if since is None:
        return None
    when = dt.datetime.fromisoformat(since)
    found = [
        a for a in vault.list([cell]) if ArchiveId.parse(a.id).when >= when.replace(microsecond=0)
    ]
    everywhere = [a for a in found if set(a.targets) >= {t.name for t in vault.targets}]
    return everywhere[-1].id if everywhere else None


def _backup_task(
    task: Any, cell: str, kind: Kind | None = None, since: str | None = None
) -> dict[str, Any]:
    """Back up *cell* on this host (the task of ``cellvault fleet backup`` and the beat)."""
    ctx = _context(task)
    started = time.monotonic()
    done = _done_since(ctx.vault, cell, since)
    if done is not None:
        log.info("fleet.backup_already_done", cell=cell, archive=done)
        return _result(ctx, cell, started, ok=True, archive=done, already_done=True)
    try:
        report = ctx.vault.backup([cell], kind=kind, reason="scheduled")
    except LockHeld as exc:
        # Another delivery of this task (or a cron job) holds the cell: not twice at once.
        return _result(ctx, cell, started, ok=False, error=str(exc))
    except CellvaultError as exc:
        return _result(ctx, cell, started, ok=False, error=str(exc))
    (one,) = report.cells
    return _result(ctx, cell, started, ok=one.ok, archive=one.archive, error=one.error)


def _restore_task(
    task: Any, cell: str, select: str = "latest", skip_prebackup: bool = False
) -> dict[str, Any]:
    """Restore *cell* onto this (standby pool) host."""
    ctx = _context(task)
    started = time.monotonic()
    try:
        report = ctx.vault.restore(select, cells=[cell], skip_prebackup=skip_prebackup)
    except CellvaultError as exc:
        return _result(ctx, cell, started, ok=False, error=str(exc))
    one = report.cells[0] if report.cells else None
    return _result(
        ctx,
        cell,
        started,
        ok=report.ok,
        archive=one.archive if one else None,
        error=report.error or (one.error if one else None),
    )


def _verify_task(task: Any, cell: str, level: str = "read") -> dict[str, Any]:
    """Verify the newest archive of *cell* on every target this host has."""
    ctx = _context(task)
    started = time.monotonic()
    try:
        report = ctx.vault.verify([cell], level=level)  # type: ignore[arg-type]
    except CellvaultError as exc:
        return _result(ctx, cell, started, ok=False, error=str(exc))
    bad = [r.error for r in report.results if not r.ok]
    return _result(ctx, cell, started, ok=report.ok, error="; ".join(e or "" for e in bad) or None)


def _pull_task(task: Any, cell: str) -> dict[str, Any]:
    """Pull *cell*'s missing archives from the object storage into this (standby) host."""
    from ..dr import Site  # DR is a sibling room: only the pull task needs it

    ctx = _context(task)
    started = time.monotonic()
    try:
        report = Site(ctx.vault).pull([cell])
    except CellvaultError as exc:
        return _result(ctx, cell, started, ok=False, error=str(exc))
    errors = [c.error for c in report.cells if not c.ok and c.error]
    copied = report.copied
    return _result(
        ctx,
        cell,
        started,
        ok=report.ok,
        archive=copied[-1] if copied else None,
        error="; ".join(errors) or None,
    )


def _fan_out_task(task: Any, kind: Kind = "incremental") -> dict[str, str]:
    """The beat's job: send a backup task for every cell of the inventory to its host."""
    app = task.app
    found = inventory(app, getattr(app, "cellvault_context", None))
    since = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    sent = {}
    for cell in found.cells:
        host = found.owner(cell)
        if host is None:
            continue
        result = app.send_task(BACKUP_TASK, args=(cell, kind, since), queue=host_queue(host))
        sent[cell] = result.id
    log.info("fleet.fan_out", kind=kind, cells=len(sent))
    return sent


@control_command(name=ANNOUNCE)  # type: ignore[untyped-decorator]
def _announce(state: Any, **_: Any) -> dict[str, Any]:
    """A worker's answer to the inventory broadcast: its host, its cells, the pool."""
    ctx = getattr(state.consumer.app, "cellvault_context", None)
    if ctx is None:
        return {"host": None, "cells": [], "pool": False}
    # A standby pool worker restores any cell its configuration lists; it owns none.
    return {"host": ctx.host, "cells": [] if ctx.pool else ctx.cells, "pool": ctx.pool}


def start_worker(
    app: Celery,
    vault: Vault,
    *,
    host: str,
    pool: bool = False,
    concurrency: int = 2,
    loglevel: str = "INFO",
    extra_args: Sequence[str] = (),
) -> None:
    """Run a worker for *host* (its queue, the control queue, the pool's if *pool*) until stopped."""
    app.cellvault_context = WorkerContext(host, vault, pool)
    settings: FleetSettings = app.cellvault_settings
    queues = [host_queue(host), CONTROL_QUEUE, *([pool_queue(settings.pool)] if pool else [])]
    argv = [
        "worker",
        "--hostname",
        f"cellvault@{host}",
        "--queues",
        ",".join(queues),
        "--pool",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
        *extra_args,
    ]
    log.info("fleet.worker_starting", host=host, queues=queues, concurrency=concurrency)
    app.worker_main(argv=argv)


def describe_error(exc: BaseException) -> str:
    """What a report says of a broker or task failure (redacted)."""
    return error_text(exc)


OnResult = Callable[[dict[str, Any]], None]
