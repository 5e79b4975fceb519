"""The fleet seen from one coordinating host: who owns which cell, fan out, wait, report."""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from kombu.exceptions import KombuError

from ..errors import FleetError
from ..log import get_logger
from ..run import error_text
from ..status import StatusReport
from ..vault import Names, Vault, names
from .app import BACKUP_TASK, RESTORE_TASK, make_app
from .inventory import inventory
from .reports import FleetReport, Inventory, TaskResult
from .settings import RESTORE_EXPIRES, FleetSettings, host_queue, pool_queue

__all__ = ["Fleet"]

log = get_logger(__name__)

OnResult = Callable[[TaskResult], None]


def _broker_errors() -> tuple[type[BaseException], ...]:
    """What the broker's and the result backend's clients raise when their server is gone."""
    errors: list[type[BaseException]] = [KombuError, OSError]
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
    except ImportError:  # an AMQP-only installation
        pass
    else:
        errors += [RedisConnectionError, RedisTimeoutError]
    return tuple(errors)


BROKER_ERRORS = _broker_errors()


def _broker_error(exc: BaseException, settings: FleetSettings) -> FleetError:
    host = settings.broker_url.split("@")[-1].split("/")[0].split("://")[-1]
    return FleetError(
        f"the fleet's broker at {host} cannot be reached ({error_text(exc)})",
        hint="check that it runs and CELLVAULT_BROKER_URL; tasks already sent are kept by the "
        "broker, and running the command again finishes the run",
    )


def _task_result(cell: str, value: Any, worker: str | None) -> TaskResult:
    if not isinstance(value, dict):
        return TaskResult(cell=cell, ok=False, error=f"the worker returned {value!r}")
    return TaskResult(
        cell=cell,
        ok=bool(value.get("ok")),
        host=value.get("host"),
        worker=worker,
        archive=value.get("archive"),
        duration=float(value.get("duration", 0.0)),
        already_done=bool(value.get("already_done")),
        error=value.get("error"),
    )


class Fleet:
    """The fleet, for a coordinating host: ``cellvault fleet ...`` and services embedding it.

    *vault* is the coordinator's own (its configuration lists the cells it
    expects someone to own, and the shared targets :meth:`status` reads).
    """

    def __init__(
        self, vault: Vault, settings: FleetSettings | None = None, app: Celery | None = None
    ) -> None:
        self.vault = vault
        self.settings = settings or FleetSettings.from_config(vault.config)
        self.app = app or make_app(self.settings)

    def hosts(self, *, timeout: float = 2.0) -> Inventory:
        """Which cells live on which host (``cellvault fleet hosts``)."""
        try:
            return inventory(
                self.app,
                configured=[c.name for c in self.vault.config.cells],
                timeout=timeout,
            )
        except BROKER_ERRORS as exc:
            raise _broker_error(exc, self.settings) from None

    def backup(
        self,
        cells: Names = None,
        *,
        kind: str | None = None,
        timeout: float | None = None,
        on_result: OnResult | None = None,
    ) -> FleetReport:
        """Back up every cell (or *cells*) on the host that owns it, and wait for them all.

        Refused on a fenced DR site. Each cell goes to its owner's queue; a
        cell nobody owns (or two hosts claim) is reported, not guessed.
        """
        self.vault.fence.check("fleet backup")
        found = self.hosts()
        wanted = list(names(cells) or found.cells or [c.name for c in self.vault.config.cells])
        since = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
        started = time.monotonic()
        pending: dict[str, AsyncResult] = {}
        unowned = []
        try:
            for cell in wanted:
                host = found.owner(cell)
                if host is None:
                    why = "claimed by several hosts" if cell in found.contested else "no owner"
                    unowned.append(f"{cell}: {why}")
                    continue
                pending[cell] = self.app.send_task(
                    BACKUP_TASK, args=(cell, kind, since), queue=host_queue(host)
                )
            results = self._wait(pending, timeout, on_result)
        except BROKER_ERRORS as exc:
            raise _broker_error(exc, self.settings) from None
        return FleetReport(
            operation="backup",
            results=tuple(results[c] for c in wanted if c in results),
            duration=time.monotonic() - started,
            unowned=tuple(unowned),
        )

    def restore(
        self,
        select: str = "latest",
        *,
        cells: Names = None,
        skip_prebackup: bool = False,
        timeout: float | None = None,
        on_result: OnResult | None = None,
    ) -> FleetReport:
        """Restore every cell (or *cells*) over the standby restore pool, largest first.

        At most ``target_concurrency`` restores run at once, so the shared
        storage is not flooded; the report's ``duration`` is the platform's RTO.
        """
        sizes = self._sizes(names(cells))
        order = sorted(sizes, key=lambda c: (-sizes[c], c))
        started = time.monotonic()
        results: dict[str, TaskResult] = {}
        waiting = list(order)
        pending: dict[str, AsyncResult] = {}
        limit = self.settings.target_concurrency
        try:
            while waiting or pending:
                while waiting and len(pending) < limit:
                    cell = waiting.pop(0)
                    pending[cell] = self.app.send_task(
                        RESTORE_TASK,
                        args=(cell, select, skip_prebackup),
                        queue=pool_queue(self.settings.pool),
                        expires=RESTORE_EXPIRES,
                    )
                results.update(self._wait(pending, timeout, on_result, first=True))
                for cell in results:
                    pending.pop(cell, None)
        except BROKER_ERRORS as exc:
            raise _broker_error(exc, self.settings) from None
        except BaseException:
            # Interrupted: restores not yet started must not start later, unasked.
            self._revoke(pending)
            raise
        return FleetReport(
            operation="restore",
            results=tuple(results[c] for c in order if c in results),
            duration=time.monotonic() - started,
        )

    def status(self, *, max_age: float | None = None) -> StatusReport:
        """Every cell's newest archive and RPO per target, read from the targets themselves.

        True even when every worker is down: nothing is asked of them.
        """
        return self.vault.status(max_age=max_age)

    def _revoke(self, pending: dict[str, AsyncResult]) -> None:
        with contextlib.suppress(*BROKER_ERRORS):
            self.app.control.revoke([r.id for r in pending.values()])

    def _sizes(self, cells: Sequence[str] | None) -> dict[str, int]:
        """Each cell's newest archive's size (with its chain) on the first target holding it."""
        out: dict[str, int] = {}
        archives = self.vault.list(cells)
        by_id = {a.id: a for a in archives}
        for a in archives:  # oldest first: the newest of each cell wins
            out[a.cell] = a.size + sum(by_id[c].size for c in a.chain if c in by_id)
        missing = sorted(set(cells or ()) - set(out))
        if missing:
            raise FleetError(
                f"no archive of cell {missing[0]} on any target", hint="see 'cellvault list'"
            )
        return out

    def _wait(
        self,
        pending: dict[str, AsyncResult],
        timeout: float | None,
        on_result: OnResult | None,
        *,
        first: bool = False,
    ) -> dict[str, TaskResult]:
        """Collect the results of *pending* (with *first*, return once any is in)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out: dict[str, TaskResult] = {}
        left = dict(pending)
        while left:
            for cell, result in list(left.items()):
                # get() with a short timeout, not ready(): on the rpc:// backend only
                # the result consumer sees every reply (a ready() poll can miss those
                # an earlier get() consumed).
                try:
                    value = result.get(timeout=0.02, propagate=False)
                except CeleryTimeoutError:
                    continue
                del left[cell]
                if result.successful():
                    done = _task_result(cell, value, None)
                else:
                    done = TaskResult(cell=cell, ok=False, error=error_text(value))
                out[cell] = done
                if on_result is not None:
                    on_result(done)
            if first and out:
                return out
            if deadline is not None and time.monotonic() > deadline:
                for cell in left:
                    out[cell] = TaskResult(
                        cell=cell, ok=False, error=f"no result within {timeout:g} s"
                    )
                return out
            if left and len(left) < 5:
                time.sleep(0.05)
        return out
