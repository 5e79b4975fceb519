"""Restore planning: which archive of a cell, from which target, with its chain, to where.

A restore (and a drill) plans every archive before it touches anything: an
unknown cell, a malformed date, a missing archive or a broken chain raises
here, before any byte is fetched.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..archive import ArchiveId, Selector, Sidecar
from ..cell import Cell, resolve_cell_path
from ..config import Config
from ..crypt import require_all
from ..errors import ArchiveCorrupt, ArchiveNotFound, CellvaultError, RestoreError, TargetError
from ..fence import Epoch, written_after_fence
from ..log import get_logger
from ..manifest import Manifest
from ..targets.base import Target

__all__ = ["RestorePlan", "choose_archive", "plan_restore"]

log = get_logger(__name__)


@attrs.frozen
class RestorePlan:
    """One cell's archive to restore, where from and where to."""

    cell: Cell
    sidecar: Sidecar
    manifest: Manifest
    #: The target read from: the first that holds the archive and its whole chain.
    target: Target
    #: The archives before it that hold some of its files, oldest first.
    chain: list[Sidecar]
    #: Root name -> the path it is restored to.
    dests: dict[str, Path]
    #: The targets after :attr:`target`, in order: read instead (see
    #: :func:`fall_back`) when the copy on :attr:`target` proves damaged or
    #: missing while it is staged.
    fallbacks: tuple[Target, ...] = ()


def plan_restore(
    config: Config,
    name: str,
    selector: Selector,
    sources: Sequence[Target],
    into: Path | None,
    *,
    epoch: Epoch | None = None,
) -> RestorePlan:
    """Plan the restore of cell *name* to the archive *selector* picks.

    Read from the first of *sources* holding the archive and its whole
    chain; into the cell's own paths or, with *into*, under ``<into>/<cell>/``
    (a cell known only from its archives may be restored so). With the
    current DR *epoch*, an archive a fenced site wrote after it began is
    passed over (and logged) unless named by its id.
    """
    if into is None:
        cell = config.cell(name)
    else:
        cell = next((c for c in config.cells if c.name == name), None) or _placeholder(name)
    ident = _choose(name, selector, sources, epoch)
    last_error: CellvaultError | None = None
    for n, target in enumerate(sources):
        found = _plan_on(target, cell, ident, into)
        if isinstance(found, RestorePlan):
            check_space(found)
            return attrs.evolve(found, fallbacks=tuple(sources[n + 1 :]))
        if found is not None:
            last_error = found
    assert last_error is not None
    raise last_error


def fall_back(plan: RestorePlan) -> RestorePlan | None:
    """*plan* read from the next of its :attr:`~RestorePlan.fallbacks` that holds the archive.

    That target must hold the archive and its whole chain, with sidecars
    naming the same roots (so the destinations stay as planned); ``None``
    when no fallback does. Nothing is read but sidecars and manifests.
    """
    rest = list(plan.fallbacks)
    while rest:
        target = rest.pop(0)
        found = _plan_on(target, plan.cell, plan.sidecar.id, None, dests=plan.dests)
        if not isinstance(found, RestorePlan):
            continue
        if dict(found.sidecar.meta.roots) != dict(plan.sidecar.meta.roots):
            log.warning(
                "restore.copy_unusable",
                target=target.name,
                archive=str(plan.sidecar.id),
                error="its sidecar names other roots than the copy planned from",
            )
            continue
        return attrs.evolve(found, fallbacks=tuple(rest))
    return None


def choose_archive(
    name: str, selector: Selector, sources: Sequence[Target], epoch: Epoch | None = None
) -> ArchiveId:
    """The archive of cell *name* a restore with *selector* would pick (reads sidecars only)."""
    return _choose(name, selector, sources, epoch)


def check_space(plan: RestorePlan) -> None:
    """Refuse, before anything is staged, a restore whose files do not fit where they go.

    The manifest declares every file's size; the staged tree is built beside
    each destination, on its file system, while the live data is still there.
    Raises :class:`RestoreError` naming the file system, the need and the
    free space.
    """
    need: dict[int, int] = {}
    where: dict[int, Path] = {}
    sizes = plan.manifest.root_bytes()
    for root, dest in plan.dests.items():
        probe = dest
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        dev = os.stat(probe).st_dev
        need[dev] = need.get(dev, 0) + sizes.get(root, 0)
        where.setdefault(dev, probe)
    for dev, size in need.items():
        free = shutil.disk_usage(where[dev]).free
        if size + SPACE_MARGIN > free:
            raise RestoreError(
                f"restoring archive {plan.sidecar.id} needs {size} bytes on the file system of "
                f"{where[dev]}, which has {free} free; nothing was touched",
                hint="free some space there, or restore elsewhere with --into",
            )


#: Room kept free beyond the files' declared bytes (directories, tar padding, dumps' scratch).
SPACE_MARGIN = 16 << 20


def _choose(
    name: str, selector: Selector, sources: Sequence[Target], epoch: Epoch | None = None
) -> ArchiveId:
    """The archive of *name* that *selector* picks among every source's."""
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
            + (f" (and {len(errors)} target(s) could not be read: {errors[0]})" if errors else ""),
            hint=_nearest(sorted(candidates), selector),
        )
    return _prefer_scheduled(matching, candidates, selector, epoch)


def _plan_on(
    target: Target,
    cell: Cell,
    ident: ArchiveId,
    into: Path | None,
    dests: dict[str, Path] | None = None,
) -> RestorePlan | CellvaultError | None:
    """The plan reading *ident* from *target*; why not (``None``: it is not there)."""
    try:
        ids = set(target.archive_ids(cell.name))
    except TargetError as exc:
        return exc
    if ident not in ids:
        return None
    try:
        sidecar = target.sidecar(ident)
        manifest = target.manifest(sidecar)
    except ArchiveCorrupt as exc:
        # Damaged or forged here: the next target holding the archive is tried.
        log.warning("restore.copy_unusable", target=target.name, archive=str(ident), error=str(exc))
        return exc
    missing = sorted(h for h in manifest.holders() if ArchiveId.parse(h) not in ids)
    if missing:
        return ArchiveNotFound(
            f"archive {ident} on target {target.name} needs archive {missing[0]} of its chain, "
            "which is missing there",
            hint="restore from a target that has the whole chain, or pick another date",
        )
    if dests is None:
        dests = _dests(cell, sidecar, into)
    try:
        chain = [
            target.sidecar(ArchiveId.parse(h)) for h in sorted(manifest.holders() - {str(ident)})
        ]
    except ArchiveCorrupt as exc:
        log.warning("restore.copy_unusable", target=target.name, archive=str(ident), error=str(exc))
        return exc
    # A chain sealed to several keys (rotated between its full and incrementals):
    # the archive whose identity is missing is named here, before anything is touched.
    require_all([*chain, sidecar])
    cut = _sealed_size_problem(target, [*chain, sidecar])
    if cut is not None:
        log.warning("restore.copy_unusable", target=target.name, archive=str(ident), error=str(cut))
        return cut
    return RestorePlan(cell, sidecar, manifest, target, chain, dests)


def _sealed_size_problem(target: Target, sidecars: Sequence[Sidecar]) -> ArchiveCorrupt | None:
    """An encrypted archive whose stored size is not its sidecar's (cut short, replaced).

    age tells a cut stream only at its end: compared here first, so that such an
    archive is refused before anything is read from it.
    """
    for link in sidecars:
        if link.encryption is None:
            continue
        key = f"{link.id.cell}/{link.data_name}"
        try:
            with target.guard(f"stat archive {link.id}", missing_ok=True):
                size = target.retrying(target.stat, key).size
        except FileNotFoundError:
            size = -1
        if size != link.size:
            found = "missing" if size < 0 else f"{size} bytes"
            return ArchiveCorrupt(
                f"stored data is {found}, the sidecar says {link.size} (truncated or replaced)",
                archive=str(link.id),
                target=target.name,
                hint="restore from another target; run 'cellvault verify' there",
            )
    return None


def _dests(cell: Cell, sidecar: Sidecar, into: Path | None) -> dict[str, Path]:
    """Where each root of *sidecar*'s archive goes; :class:`RestoreError` for a root gone."""
    roots = dict(sidecar.meta.roots)
    if into is not None:
        return {r: into / cell.name / r for r in roots}
    unknown = sorted(set(roots) - set(cell.roots))
    if unknown:
        raise RestoreError(
            f"archive {sidecar.id} holds path {roots[unknown[0]]}, which cell {cell.name} no longer has",
            hint="restore it into another directory with --into",
        )
    # A cell path that is a link is restored into the data it points to; the link stays.
    return {r: resolve_cell_path(cell.name, cell.roots[r]) for r in roots}


def _prefer_scheduled(
    matching: list[ArchiveId],
    where: dict[ArchiveId, Target],
    selector: Selector,
    epoch: Epoch | None = None,
) -> ArchiveId:
    """The newest match that is not a pre-restore safety backup, if there is one.

    A restore's safety backup holds the data the restore replaced. Picked
    by ``latest`` or a date, it would bring that data back on a second run
    of the same restore; it is restored only when named by its id (or when
    nothing else matches). Nor is an archive a fenced site wrote after the
    current *epoch* began (logged as ``restore.fenced_archive_ignored``).
    """
    if selector.kind == "id":
        return matching[-1]
    fallback: ArchiveId | None = None
    for ident in reversed(matching):
        try:
            meta = where[ident].sidecar(ident).meta
        except CellvaultError:
            return ident  # let planning report what is wrong with it
        if epoch is not None and written_after_fence(meta.epoch, ident.when, epoch):
            log.warning(
                "restore.fenced_archive_ignored",
                archive=str(ident),
                written_by=meta.site,
                epoch=meta.epoch,
                current_epoch=epoch.number,
                active=epoch.site,
            )
            continue
        if meta.reason != "pre-restore":
            return ident
        fallback = fallback or ident
    if fallback is None:
        # Every match was written by a fenced site after the fence: none is restored.
        raise ArchiveNotFound(
            f"every archive matching {selector} was written by a fenced site after site "
            f"{epoch.site if epoch else '?'} took the current DR epoch; none is restored",
            hint="pick an earlier date, or name an archive by its id to restore it anyway",
        )
    return fallback


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
