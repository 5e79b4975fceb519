"""Read leases for the archives a restore (or drill) reads, so a prune keeps them meanwhile."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from ..errors import ArchiveNotFound
from ..readlease import ReadLease
from ..run import Run
from .plan import RestorePlan

__all__ = ["hold_archives"]


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
            stack.enter_context(
                ReadLease.acquire(
                    plan.target, plan.cell.name, ids, purpose, ttl=run.config.lock_ttl
                )
            )
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
