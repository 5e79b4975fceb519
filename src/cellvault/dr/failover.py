"""Failover: make the standby the active site (the seed's ``dr_failover.sh``)."""

from __future__ import annotations

import time

import attrs

from ..archive import Selector, Sidecar
from ..errors import DrError, TargetError
from ..fence import Epoch
from ..log import get_logger
from ..report import RestoreReport, VerifyReport, iso
from .context import SiteContext, hooks_error, restore_error, restored_archives, verify_error
from .records import FailoverMarker
from .replicate import pull
from .reports import FailoverReport, SyncReport
from .steps import failover_steps

__all__ = ["failover"]

log = get_logger(__name__)


@attrs.define
class _Failover:
    """A failover under way: what it has done so far, for the report it stops with."""

    ctx: SiteContext
    started: float = attrs.Factory(time.monotonic)
    warnings: list[str] = attrs.Factory(list)
    #: The epoch number seen when the failover started (another claim since wins).
    over: int | None = None
    pull: SyncReport | None = None
    verify: VerifyReport | None = None
    restore: RestoreReport | None = None
    epoch: Epoch | None = None

    def report(self, *, ok: bool, **fields: object) -> FailoverReport:
        return FailoverReport(
            site=self.ctx.site_id,
            ok=ok,
            epoch=self.epoch.number if self.epoch else None,
            pull=self.pull,
            verify=self.verify,
            restore=self.restore,
            warnings=tuple(self.warnings),
            duration=time.monotonic() - self.started,
            **fields,  # type: ignore[arg-type]
        )

    def stop(self, error: str) -> FailoverReport:
        return self.report(ok=False, error=error)


def _refuse_if_active(ctx: SiteContext) -> FailoverMarker | None:
    """The marker in effect, if any; :class:`DrError` for it (callers skip this when forced)."""
    current, where = ctx.markers.current()
    if current is not None:
        who = "this site" if current.site_id == ctx.site_id else f"site {current.site_id}"
        raise DrError(
            f"a failover to {who} is already in effect since {iso(current.at)} "
            f"(marker on {where}, written by host {current.host})",
            hint="see 'cellvault dr status'; after the primary recovers use 'cellvault dr "
            "failback'; --force writes a new marker anyway",
        )
    return current


def _newest_here(
    ctx: SiteContext, cells: list[str], selector: Selector
) -> tuple[dict[str, Sidecar], list[str]]:
    """The archive of each cell a failover would use, and why it is not the newest."""
    problems: list[str] = []
    chosen: dict[str, Sidecar] = {}
    for cell in cells:
        sidecar = ctx.choose(cell, selector)
        if sidecar is None:
            problems.append(f"cell {cell}: no archive matching {selector} on this site")
            continue
        chosen[cell] = sidecar
        for target in ctx.storage:
            try:
                newest = target.archive_ids(cell)
            except TargetError as exc:
                problems.append(f"cell {cell}: cannot tell what {target.name} holds: {exc}")
                continue
            if selector.kind == "latest" and newest and newest[-1] > sidecar.id:
                problems.append(
                    f"cell {cell}: {target.name} holds {newest[-1]}, newer than {sidecar.id} "
                    "on this site (the pull did not bring it)"
                )
    return chosen, problems


def _pull(ctx: SiteContext, attempt: _Failover) -> None:
    attempt.pull = sync = pull(ctx, record=False)
    attempt.warnings += [
        f"pull: {c.cell} from {c.source}: {c.error}" for c in sync.cells if not c.ok
    ]
    attempt.warnings += [f"pull: {c.cell}: {c.locked}" for c in sync.locked]


def failover(
    ctx: SiteContext,
    *,
    restore: str | None = None,
    skip_prebackup: bool = False,
    force: bool = False,
    pull_first: bool = True,
    switch: bool = True,
    previous_site: str | None = None,
) -> FailoverReport:
    """See :meth:`cellvault.dr.Site.failover`.

    With *switch* false the ``cellvault_switch_traffic`` hooks are left to
    the caller (``dr watch`` records that it is switching first).
    *previous_site*: the site that served before, when the caller knows it.
    """
    attempt = _Failover(ctx)
    seen = ctx.fence.current()  # the epoch this failover takes over from
    attempt.over = seen.number if seen else 0
    current = ctx.markers.current()[0] if force else _refuse_if_active(ctx)
    if pull_first and ctx.storage:
        _pull(ctx, attempt)
    selector = Selector.parse(restore) if restore else Selector.parse("latest")
    cells = ctx.cells_here()
    if not cells:
        return attempt.stop("this site holds no archive of any cell and has no cell configured")
    chosen, problems = _newest_here(ctx, cells, selector)
    attempt.warnings += [
        f"cell {cell} has archives on the object storage but is not configured here"
        for cell in sorted(set(ctx.storage_cells()) - set(cells))
    ]
    if problems and not force:
        return attempt.stop(
            "this site does not hold the newest backups: "
            + "; ".join(problems)
            + " (fix the pull and run again, or --force to fail over with what is here)"
        )
    attempt.warnings += problems
    attempt.verify = verify = ctx.verify(chosen)
    if not verify.ok and not force:
        return attempt.stop(
            f"the newest archives do not verify on this site: {verify_error(verify)}"
        )
    # Fence the old primary: claim the next epoch. Only one claimant wins, so
    # two standbys racing to fail over cannot both go on.
    try:
        attempt.epoch = ctx.take_epoch("failover", over=attempt.over)
    except DrError as exc:
        return attempt.stop(
            f"this site could not take the DR epoch, so it did not fail over: {exc}"
        )
    if restore:
        attempt.restore = ctx.restore(chosen, selector, skip_prebackup=skip_prebackup)
        if attempt.restore is not None and not attempt.restore.ok:
            return attempt.stop(
                f"the restore failed, so no failover marker was written (this site holds epoch "
                f"{attempt.epoch.number}: the old primary is fenced; run the failover again "
                "with --force once the cause is fixed): " + restore_error(attempt.restore)
            )
    marker = FailoverMarker(
        site_id=ctx.site_id,
        at=ctx.now(),
        host=ctx.vault.host,
        previous_site=(current.site_id if current else None)
        or previous_site
        or (seen.site if seen and seen.site != ctx.site_id else None)
        or ctx.previous_site(),
        restored=restored_archives(attempt.restore),
        verified={
            c: str(s.id)
            for c, s in chosen.items()
            if any(r.ok and r.archive == str(s.id) for r in verify.results)
        },
        forced=force and (current is not None or bool(problems) or not verify.ok),
    )
    return _switch(ctx, attempt, marker, switch=switch)


def _switch(
    ctx: SiteContext, attempt: _Failover, marker: FailoverMarker, *, switch: bool = True
) -> FailoverReport:
    """Write *marker* everywhere (the epoch is taken), call the hooks, record this site."""
    written, errors = ctx.markers.publish(marker)
    attempt.warnings += errors
    if not written:
        return attempt.stop(
            "the failover marker could not be written anywhere: " + "; ".join(errors)
        )
    log.info("dr.failover", site=ctx.site_id, restored=dict(marker.restored), written=written)
    hooks = ctx.failover_hooks(marker) + (ctx.switch_traffic(marker) if switch else [])
    attempt.warnings += ctx.record("failover")
    error = hooks_error(hooks, "failover done and marker written", "switch the traffic by hand")
    return attempt.report(
        ok=error is None,
        marker=marker,
        marker_written=tuple(written),
        hooks=tuple(hooks),
        steps=failover_steps(marker, restored=bool(marker.restored)),
        error=error,
    )
