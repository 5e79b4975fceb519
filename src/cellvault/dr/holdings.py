"""What a target holds of each cell, and how far one target is behind another."""

from __future__ import annotations

from collections.abc import Collection

from ..archive import ArchiveId
from ..cell import validate_cell_name
from ..errors import ConfigError
from ..targets.base import SIDECAR_SUFFIX, Target
from .records import Holding
from .reports import CellLag

__all__ = ["cells_of", "holding", "holdings", "lag"]


def cells_of(target: Target) -> list[str]:
    """The cells with a folder on *target* (not the seed's ``logs`` or other folders)."""
    out = []
    for name in target.cells():
        try:
            validate_cell_name(name)
        except ConfigError:
            continue
        out.append(name)
    return out


def holding(target: Target, cell: str) -> tuple[Holding, list[ArchiveId]]:
    """What *target* holds of *cell*, and the committed archives' ids, from one listing."""
    with target.guard(f"list archives of cell {cell}"):
        entries = target.retrying(target.list, cell)
    files = {e.name: e.size for e in entries if not e.is_dir}
    stems = (name.removesuffix(SIDECAR_SUFFIX) for name in files if name.endswith(SIDECAR_SUFFIX))
    ids = sorted(ArchiveId.parse(stem) for stem in stems if ArchiveId.is_id(stem))
    committed = {str(i) for i in ids}
    size = sum(n for name, n in files.items() if name.split(".", 1)[0] in committed)
    newest = ids[-1] if ids else None
    found = Holding(
        count=len(ids),
        bytes=size,
        newest=str(newest) if newest else None,
        newest_at=newest.when if newest else None,
    )
    return found, ids


def holdings(target: Target) -> dict[str, Holding]:
    """What *target* holds, per cell."""
    return {cell: holding(target, cell)[0] for cell in cells_of(target)}


def lag(
    cell: str,
    target: str,
    here: list[ArchiveId],
    there: list[ArchiveId],
    safety: Collection[ArchiveId] = (),
) -> CellLag:
    """How far *here* (this site's archives of *cell*) is from *there* (on *target*).

    The archives in *safety* (pre-restore safety backups) are listed apart
    and never counted: they stay on the site that took them.
    """
    skip = set(safety)
    mine = [i for i in here if i not in skip]
    theirs = [i for i in there if i not in skip]
    newest_here = mine[-1] if mine else None
    newest_there = theirs[-1] if theirs else None
    seconds = (
        abs((newest_there.when - newest_here.when).total_seconds())
        if newest_here and newest_there
        else None
    )
    behind = [str(i) for i in theirs if newest_here is None or i > newest_here]
    ahead = [str(i) for i in mine if newest_there is None or i > newest_there]
    leader = "remote" if behind and not ahead else "local" if ahead and not behind else "even"
    if newest_here and newest_there and newest_here != newest_there and leader == "even":
        leader = "remote" if newest_there > newest_here else "local"
    return CellLag(
        cell=cell,
        target=target,
        local=str(newest_here) if newest_here else None,
        remote=str(newest_there) if newest_there else None,
        lag_seconds=abs(seconds) if seconds is not None else None,
        behind=len(behind),
        ahead=len(ahead),
        leader=leader,
        behind_archives=tuple(behind),
        ahead_archives=tuple(ahead),
        safety=tuple(sorted(str(i) for i in skip if i in set(here) | set(there))),
    )
