"""Read leases for the archives a restore (or drill) reads, so a prune keeps them meanwhile."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from ..errors import ArchiveNotFound, TargetError
from ..log import get_logger
from ..readlease import ReadLease
from ..run import Run, error_text
from .plan import RestorePlan

__all__ = ["hold_archives"]

log = get_logger(__name__)


def hold_archives(
    run: Run, plans: Sequence[RestorePlan], purpose: str = "restore"
) -> contextlib.ExitStack:
    """Take a read lease on each plan's archive and chain, at the target it is read from.

    Raises :class:`ArchiveNotFound` when an archive was pruned between the
    planning and the lease (nothing was touched; run again).
    """
    stack = contextlib.ExitStack()
    try:
        for plan in plans:
            ids = [str(s.id) for s in (*plan.chain, plan.sidecar)]
            try:
                lease = ReadLease.acquire(
                    plan.target, plan.cell.name, ids, purpose, ttl=run.config.lock_ttl
                )
            except TargetError as exc:
                # The target takes no lease now: a prune there cannot take its own either.
                log.warning("restore.unheld", cell=plan.cell.name, error=error_text(exc))
                run.emit("restore.unheld", cell=plan.cell.name, error=error_text(exc))
                continue
            stack.enter_context(lease)
            present = {str(i) for i in plan.target.archive_ids(plan.cell.name)}
            gone = [i for i in ids if i not in present]
            if gone:
                raise ArchiveNotFound(
                    f"archive {gone[0]} of cell {plan.cell.name} on target {plan.target.name} "
                    f"was pruned while the {purpose} was being planned; nothing was touched",
                    hint=f"run the {purpose} again",
                )
            run.emit("restore.held", cell=plan.cell.name, target=plan.target.name, archives=ids)
    except BaseException:
        stack.close()
        raise
    return stack
