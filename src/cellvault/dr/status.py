"""A DR status: which site is active, what each target holds, how far behind each side is."""

from __future__ import annotations

from collections.abc import Sequence

from ..archive import ArchiveId
from ..errors import CellvaultError
from ..targets.base import Target
from .context import SiteContext
from .holdings import cells_of, holding, lag
from .records import FailoverMarker
from .reports import CellLag, StatusReport, TargetView

__all__ = ["status"]


def _marker(ctx: SiteContext, warnings: list[str]) -> tuple[FailoverMarker | None, str | None]:
    """The marker in effect and where it was read, with what is odd about it in *warnings*."""
    remote, where, errors = ctx.markers.remote()
    local = ctx.markers.local()
    if where is not None:
        if local is not None and remote is None:
            warnings.append(
                f"this site still has a marker of the failover to {local.site_id} "
                "that the object storage no longer holds: the next pull retires it"
            )
        return remote, (where if remote else None)
    if ctx.storage:
        warnings.append("the object storage cannot be read: " + "; ".join(errors))
    return local, ("local" if local else None)


def _views(
    ctx: SiteContext, cells: Sequence[str] | None
) -> tuple[list[TargetView], dict[str, dict[str, list[ArchiveId]]]]:
    """What each target holds, and the ids of the archives of each cell on each target."""
    views: list[TargetView] = []
    ids: dict[str, dict[str, list[ArchiveId]]] = {}
    wanted = list(cells) if cells else None
    for target in [ctx.local, *ctx.storage]:
        try:
            names = wanted or cells_of(target)
            held = {}
            ids[target.name] = {}
            for cell in names:
                held[cell], ids[target.name][cell] = holding(target, cell)
            views.append(TargetView(target.name, True, held))
        except CellvaultError as exc:
            views.append(TargetView(target.name, False, error=str(exc)))
    return views, ids


def _scheduled(target: Target, ids: list[ArchiveId], since: ArchiveId | None) -> list[ArchiveId]:
    """*ids* without the pre-restore safety backups among those newer than *since*.

    Only those can change the lag; their sidecars are read (few), the rest not.
    """
    out = []
    for ident in ids:
        if since is None or ident > since:
            try:
                if target.sidecar(ident).meta.reason == "pre-restore":
                    continue
            except CellvaultError:
                pass  # counted: what is wrong with it shows elsewhere
        out.append(ident)
    return out


def status(ctx: SiteContext, cells: Sequence[str] | None = None) -> StatusReport:
    """See :meth:`cellvault.dr.Site.status`."""
    warnings: list[str] = []
    marker, source = _marker(ctx, warnings)
    epoch = ctx.fence.current() if ctx.storage else None
    if (
        epoch is not None
        and epoch.site != ctx.site_id
        and (marker is None or marker.site_id == ctx.site_id)
    ):
        warnings.append(
            f"site {epoch.site} holds DR epoch {epoch.number}: this site is fenced from the "
            "object storage (its backups, pushes and prunes there are refused)"
        )
    views, ids = _views(ctx, cells)
    lags: list[CellLag] = []
    here = ids.get(ctx.local.name)
    if here is not None:
        for target in ctx.storage:
            there = ids.get(target.name)
            if there is None:
                continue
            for cell in sorted(set(here) | set(there)):
                mine, theirs = here.get(cell, []), there.get(cell, [])
                since = min(mine[-1], theirs[-1]) if mine and theirs else None
                kept = set(_scheduled(ctx.local, mine, since)) | set(
                    _scheduled(target, theirs, since)
                )
                safety = (set(mine) | set(theirs)) - kept
                lags.append(lag(cell, target.name, mine, theirs, safety))
    sites = tuple(ctx.markers.records())
    # What DR found on the shared targets and does not believe (reported, never used).
    warnings.extend(
        f"{name}: {key} is not believed ({error})"
        for target in ctx.storage
        for name, key, error in target.distrusted()
        if key.startswith(".dr/")
    )
    return StatusReport(
        site=ctx.site_id,
        active=marker.site_id if marker else None,
        marker=marker,
        marker_source=source,
        targets=tuple(views),
        lag=tuple(lags),
        sites=sites,
        warnings=tuple(warnings),
        epoch=epoch.number if epoch else None,
        epoch_site=epoch.site if epoch else None,
        epoch_since=epoch.at if epoch else None,
    )
