"""Failback: the active site hands back, then the recovered primary takes over again.

Two steps on two sites. On the **active** site (the one the marker names),
step ``handback``: a final backup, a push, and the hand-back recorded in the
marker. On the **recovered primary**, step ``takeover``: a pull, a check
that exactly the handed-back archives are the newest there, a verify, the
restore, the marker cleared and the ``cellvault_failover`` hooks called.
"""

from __future__ import annotations

import time
from typing import Any, cast

import attrs

from ..archive import Kind, Selector, Sidecar
from ..errors import DrError
from ..log import get_logger
from ..report import BackupReport
from .context import SiteContext, hooks_error, restore_error, restored_archives, verify_error
from .holdings import cells_of
from .records import FailoverMarker, Handback
from .replicate import pull, push
from .reports import FailbackReport
from .steps import handback_steps, takeover_steps

__all__ = ["failback", "hand_back", "take_over"]

log = get_logger(__name__)


@attrs.define
class _Step:
    """One failback step under way, for the report it ends with."""

    ctx: SiteContext
    step: str
    started: float = attrs.Factory(time.monotonic)
    warnings: list[str] = attrs.Factory(list)
    #: The epoch number seen when the step started (another claim since wins).
    over: int | None = None

    def report(self, *, ok: bool, **fields: Any) -> FailbackReport:
        fields.setdefault("warnings", tuple(self.warnings))
        return FailbackReport(
            site=self.ctx.site_id,
            step=self.step,
            ok=ok,
            duration=time.monotonic() - self.started,
            **fields,
        )


def failback(
    ctx: SiteContext,
    *,
    final_backup: str | None = "incremental",
    restore: bool = True,
    skip_prebackup: bool = False,
    force: bool = False,
) -> FailbackReport:
    """See :meth:`cellvault.dr.Site.failback`."""
    ctx.need_storage("a failback")
    marker, _ = ctx.markers.current()
    if marker is None:
        raise DrError(
            "no failover is in effect: there is nothing to fail back",
            hint="'cellvault dr status' shows which site is active",
        )
    if marker.site_id == ctx.site_id:
        return hand_back(ctx, marker, final_backup)
    return take_over(ctx, marker, restore=restore, skip_prebackup=skip_prebackup, force=force)


def hand_back(ctx: SiteContext, marker: FailoverMarker, final_backup: str | None) -> FailbackReport:
    """Step ``handback`` on the active site: final backup, push, the hand-back in the marker."""
    step = _Step(ctx, "handback")
    backup: BackupReport | None = None
    if final_backup:
        backup = ctx.vault.backup(kind=cast(Kind, final_backup), reason="failback")
        if not backup.ok:
            return step.report(
                ok=False, backup=backup, error="the final backup failed; nothing was handed back"
            )
    sync = push(ctx)
    if not sync.ok:
        error = "the push failed; nothing was handed back"
        return step.report(ok=False, backup=backup, push=sync, error=error)
    if sync.locked:
        error = (
            "cells were locked by another run, so the push is incomplete: "
            + "; ".join(c.locked or "" for c in sync.locked)
            + " (run it again)"
        )
        return step.report(ok=False, backup=backup, push=sync, error=error)
    now = ctx.now()
    archives: dict[str, str] = {}
    for cell in cells_of(ctx.local):
        chosen = ctx.choose(cell, Selector.at_or_before(now))
        if chosen is None:
            continue
        for target in ctx.storage:
            if chosen.id not in set(target.archive_ids(cell)):
                error = f"archive {chosen.id} is not on {target.name} after the push"
                return step.report(ok=False, backup=backup, push=sync, error=error)
        archives[cell] = str(chosen.id)
    ctx.fence.check("hand back")  # pushed under this site's epoch; still so before the marker
    handback = Handback(site_id=ctx.site_id, host=ctx.vault.host, at=now, archives=archives)
    handed = attrs.evolve(marker, handback=handback)
    written, errors = ctx.markers.publish(handed)
    step.warnings += errors
    if not any(w != "local" for w in written):
        error = "the hand-back could not be written to the object storage: " + "; ".join(errors)
        return step.report(ok=False, backup=backup, push=sync, error=error)
    step.warnings += ctx.record("handback")
    return step.report(
        ok=True,
        marker=handed,
        backup=backup,
        push=sync,
        marker_written=tuple(written),
        steps=handback_steps(handed),
    )


def _handed_back_here(
    ctx: SiteContext, marker: FailoverMarker, selector: Selector
) -> tuple[dict[str, Sidecar], list[str]]:
    """The archive of each handed-back cell here, and where it is not the one handed back."""
    expected = dict(marker.handback.archives) if marker.handback else {}
    chosen: dict[str, Sidecar] = {}
    problems = []
    for cell in list(expected) or ctx.storage_cells():
        sidecar = ctx.choose(cell, selector)
        if sidecar is None:
            problems.append(f"cell {cell}: no archive here after the pull")
            continue
        if cell in expected and str(sidecar.id) != expected[cell]:
            problems.append(
                f"cell {cell}: the newest archive here is {sidecar.id}, not {expected[cell]} "
                f"that site {marker.site_id} handed back (were backups taken on this site "
                "during the failover?)"
            )
            continue
        chosen[cell] = sidecar
    return chosen, problems


def take_over(
    ctx: SiteContext, marker: FailoverMarker, *, restore: bool, skip_prebackup: bool, force: bool
) -> FailbackReport:
    """Step ``takeover`` on the recovered primary: pull, verify, restore, clear the marker."""
    step = _Step(ctx, "takeover")
    seen = ctx.fence.current()
    step.over = seen.number if seen else 0
    handback = marker.handback
    if handback is None and not force:
        raise DrError(
            f"site {marker.site_id} is active and has not handed back yet",
            hint=f"on site {marker.site_id}, stop writes and run 'cellvault dr failback' "
            "there first; --force takes over with the newest archives on the object storage",
        )
    sync = pull(ctx, record=False)
    if not sync.ok or sync.locked:
        error = "the pull failed or was incomplete; nothing was restored (run it again)"
        return step.report(ok=False, marker=marker, pull=sync, warnings=(), error=error)
    when = handback.at if handback else ctx.now()
    chosen, problems = _handed_back_here(ctx, marker, Selector.at_or_before(when))
    if problems and not force:
        return step.report(
            ok=False, marker=marker, pull=sync, warnings=(), error="; ".join(problems)
        )
    step.warnings += problems
    verify = ctx.verify(chosen)
    if not verify.ok:
        error = f"the handed-back archives do not verify here: {verify_error(verify)}"
        return step.report(
            ok=False, marker=marker, pull=sync, verify=verify, warnings=(), error=error
        )
    try:
        # The active site is fenced from here on: it must not push any more.
        epoch = ctx.take_epoch("failback", over=step.over)
    except DrError as exc:
        error = f"this site could not take the DR epoch, so it did not take over: {exc}"
        return step.report(
            ok=False, marker=marker, pull=sync, verify=verify, warnings=(), error=error
        )
    result = None
    if restore:
        configured = ctx.configured()
        step.warnings += [
            f"cell {c} was handed back but is not configured here; not restored"
            for c in chosen
            if c not in configured
        ]
        result = ctx.restore(chosen, Selector.at_or_before(when), skip_prebackup=skip_prebackup)
        if result is not None and not result.ok:
            error = (
                f"the restore failed; the failover marker stays (this site holds epoch "
                f"{epoch.number}: run the failback again once the cause is fixed): "
                f"{restore_error(result)}"
            )
            return step.report(
                ok=False,
                marker=marker,
                pull=sync,
                verify=verify,
                restore=result,
                error=error,
                epoch=epoch.number,
            )
    back = FailoverMarker(
        site_id=ctx.site_id,
        at=ctx.now(),
        host=ctx.vault.host,
        event="failback",
        previous_site=marker.site_id,
        restored=restored_archives(result),
        verified={c: str(s.id) for c, s in chosen.items()},
        handback=handback,
        forced=force and (handback is None or bool(problems)),
    )
    return _clear(
        ctx, step, marker, back, pull=sync, verify=verify, restore=result, epoch=epoch.number
    )


def _clear(
    ctx: SiteContext,
    step: _Step,
    marker: FailoverMarker,
    back: FailoverMarker,
    **done: Any,
) -> FailbackReport:
    """Retire the failover's marker and record *back* beside it; call the hooks."""
    step.warnings += ctx.markers.retire(marker, everywhere=True)
    # The failback itself goes into the history beside the failover it ended.
    step.warnings += ctx.markers.retire(back, everywhere=True)
    log.info("dr.failback", site=ctx.site_id, restored=dict(back.restored))
    hooks = ctx.failover_hooks(back) + ctx.switch_traffic(back)
    step.warnings += ctx.record("failback")
    error = hooks_error(
        hooks, "failback done and marker cleared", "switch the traffic back by hand"
    )
    return step.report(
        ok=error is None,
        marker=back,
        hooks=tuple(hooks),
        marker_written=tuple(t.name for t in ctx.storage),
        steps=takeover_steps(back, restored=bool(back.restored)),
        error=error,
        **done,
    )
