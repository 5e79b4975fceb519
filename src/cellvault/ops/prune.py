"""The prune operation: delete what each target's retention policy no longer keeps.

The decisions are :func:`cellvault.retention.plan`'s; this module carries
them out, per target and cell, under the cell's lease.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import attrs

from ..errors import CellvaultError
from ..lock import Lease
from ..log import get_logger
from ..readlease import read_holds
from ..retention import Decision, PruneReport, PruneResult, RetentionPolicy, plan
from ..run import Run, error_text
from ..runlog import prune_logs
from ..specs import DEFAULT_TTL
from ..targets.base import Target
from .listing import all_cells, known_cells
from .resources import Resources, check_fence

__all__ = ["prune", "prune_cell"]

log = get_logger(__name__)


def prune(
    run: Run,
    res: Resources,
    cells: Sequence[str] | None,
    *,
    targets: Sequence[str] | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """The operation of :meth:`cellvault.Vault.prune` (see there), as *run*."""
    names = (
        known_cells(run.config, res.targets, cells) if cells else all_cells(run.config, res.targets)
    )
    tgts = res.chosen(targets)
    if not dry_run:
        check_fence(run, res, tgts, "prune")
    now = res.now()
    results: list[PruneResult] = []
    for target in tgts:
        policy = run.config.retention_for(target.name)
        for cell in names:
            try:
                if not dry_run and target.name in res.fence.names:
                    res.fence.check(f"pruning cell {cell} on target {target.name}")
                result = prune_cell(
                    target, cell, policy, now, dry_run=dry_run, lock_ttl=run.config.lock_ttl
                )
            except CellvaultError as exc:
                run.fail("prune", str(exc), cell=cell, target=target.name)
                result = PruneResult(target.name, cell, (), dry_run, error=str(exc))
            results.append(result)
            run.emit(
                "prune.cell",
                cell=cell,
                target=target.name,
                removed=[str(d.id) for d in result.removed],
                dry_run=dry_run,
            )
    if not dry_run:
        # Run logs go with the archives (the newest of each kind always stay).
        try:
            prune_logs(run.layout.logs, keep_days=run.config.log_keep_days)
        except OSError as exc:
            log.warning("runlog.prune_failed", error=error_text(exc))
    return PruneReport(results=tuple(results), dry_run=dry_run)


def prune_cell(
    target: Target,
    cell: str,
    policy: RetentionPolicy,
    now: dt.datetime,
    *,
    dry_run: bool = False,
    lock_ttl: float = DEFAULT_TTL,
) -> PruneResult:
    """Apply *policy* to *cell* on *target* under the cell's lease.

    Archives go newest first, each sidecar before its data, so at no moment
    does a committed archive need one that is already gone. Debris of
    interrupted runs is removed too. A dry run lists the same decisions and
    touches nothing.
    """
    if dry_run:
        decisions = _held(_planned(target, cell, policy, now), read_holds(target, cell))
        decisions = _locked(decisions, target)
        return PruneResult(target.name, cell, tuple(decisions), True, tuple(target.debris(cell)))
    with Lease.acquire(target, cell, "prune", lock_ttl):
        # Under the lease no read lease can appear: what a restore reads now is kept.
        decisions = _held(_planned(target, cell, policy, now), read_holds(target, cell))
        # Never ask the store to delete what it keeps locked: wait for the date.
        decisions = _locked(decisions, target)
        for decision in sorted(
            (d for d in decisions if not d.keep), key=lambda d: d.id, reverse=True
        ):
            target.delete_archive(decision.sidecar)
            log.info(
                "archive.pruned",
                target=target.name,
                archive=str(decision.id),
                reasons=list(decision.reasons),
            )
        debris = target.clear_debris(cell)
    return PruneResult(target.name, cell, tuple(decisions), False, tuple(debris))


def _planned(
    target: Target, cell: str, policy: RetentionPolicy, now: dt.datetime
) -> list[Decision]:
    """The retention plan of *cell* on *target*, over the archives whose data is there whole.

    An archive whose stored data is missing, or not the size its sidecar
    says (by the listing: nothing is read), is neither counted by the rules
    nor deleted: counted, a sidecar planted in the store (or one whose data
    the store lost) could pass for the newest archive and have the real
    newest pruned. ``verify`` names it; a person decides.
    """
    with target.guard(f"list archives of cell {cell}"):
        listing = target.retrying(target.list, cell)
    sidecars = target.archives(cell, listing)
    stored = {e.name: e.size for e in listing if not e.is_dir}
    whole = [s for s in sidecars if stored.get(s.data_name) == s.size]
    out = plan(whole, policy, now)
    for s in sidecars:
        size = stored.get(s.data_name)
        if size == s.size:
            continue
        found = "is missing" if size is None else f"is {size} bytes, the sidecar says {s.size}"
        why = f"its data {found}: not counted by the rules and not deleted (see verify)"
        out.append(Decision(s, keep=True, reasons=(why,)))
    return sorted(out, key=lambda d: d.id)


def _held(decisions: Sequence[Decision], holds: Mapping[str, str]) -> list[Decision]:
    """*decisions*, keeping (and saying why) every archive a live read lease names."""
    return [
        attrs.evolve(d, keep=True, reasons=(*d.reasons, f"held by {holds[str(d.id)]}"))
        if not d.keep and str(d.id) in holds
        else d
        for d in decisions
    ]


def _locked(decisions: Sequence[Decision], target: Target) -> list[Decision]:
    """*decisions*, keeping (and saying until when) every archive the store holds locked."""
    out = []
    for d in decisions:
        until = None if d.keep else target.locked_until(d.sidecar)
        if until is not None:
            why = f"locked on the store until {until.isoformat().replace('+00:00', 'Z')}; pruned after that"
            d = attrs.evolve(d, keep=True, reasons=(*d.reasons, why))
        out.append(d)
    return out
