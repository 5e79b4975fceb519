"""What a vault reports without running anything: archives, cells, status and metrics."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ..archive import ArchiveId, Kind, Sidecar
from ..cell import Cell, validate_cell_name
from ..config import Config
from ..errors import ConfigError, TargetError
from ..journal import debris
from ..log import get_logger
from ..metrics import write_textfile
from ..run import error_text
from ..state import StateFile
from ..status import StatusReport, build_status
from ..targets.base import Target
from .resources import Resources

__all__ = [
    "ArchiveInfo",
    "all_cells",
    "cells_to_check",
    "configured_cells",
    "known_cells",
    "list_archives",
    "status",
    "write_metrics",
]

log = get_logger(__name__)


@attrs.frozen
class ArchiveInfo:
    """One archive as :meth:`Vault.list` shows it, merged across targets."""

    id: str
    cell: str
    kind: Kind
    backed_at: str
    size: int
    files: int
    parent: str | None
    chain: tuple[str, ...]
    reason: str
    targets: tuple[str, ...]

    @classmethod
    def of(cls, sidecar: Sidecar, targets: Sequence[str]) -> ArchiveInfo:
        """The archive of *sidecar*, held by *targets*."""
        meta = sidecar.meta
        return cls(
            id=str(sidecar.id),
            cell=sidecar.id.cell,
            kind=meta.kind,
            backed_at=meta.to_dict()["backed_at"],
            size=sidecar.size,
            files=sidecar.files,
            parent=str(meta.parent) if meta.parent else None,
            chain=tuple(str(a) for a in meta.chain),
            reason=meta.reason,
            targets=tuple(targets),
        )

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def configured_cells(config: Config, names: Sequence[str] | None) -> list[Cell]:
    """The configured cells called *names* (all when empty); :class:`ConfigError` when none is."""
    if not names:
        if not config.cells:
            raise ConfigError(
                "no cells are configured", hint="set BACKUP_CELLS or [cells] in the config"
            )
        return list(config.cells)
    return [config.cell(n) for n in dict.fromkeys(names)]


def all_cells(config: Config, targets: Sequence[Target]) -> list[str]:
    """Every cell configured or with archives on one of *targets*, sorted."""
    names: set[str] = {c.name for c in config.cells}
    for target in targets:
        with contextlib.suppress(TargetError):
            names.update(target.cells())
    return sorted(names)


def known_cells(config: Config, targets: Sequence[Target], names: Sequence[str]) -> list[str]:
    """*names*, each configured or with archives on some target; :class:`ConfigError` otherwise.

    Reading archives (a DR site's verify) needs no configured cell, but
    a name nobody knows is a typo, not an empty result.
    """
    wanted = [validate_cell_name(n) for n in dict.fromkeys(names)]
    configured = {c.name for c in config.cells}
    if all(n in configured for n in wanted):
        return wanted
    known = all_cells(config, targets)
    for name in wanted:
        if name not in known:
            raise ConfigError(
                f"unknown cell {name!r}: not configured and no archive of it on any target",
                hint=f"known cells: {', '.join(known) or 'none'}",
            )
    return wanted


def cells_to_check(
    config: Config, targets: Sequence[Target], names: Sequence[str] | None
) -> list[str]:
    """The cells a verify or status looks at: *names*, else the configured ones, else all."""
    if names:
        return known_cells(config, targets, names)
    # Configured cells: a retired cell's old archives must not fail status forever.
    return [c.name for c in config.cells] or all_cells(config, targets)


def list_archives(
    config: Config,
    res: Resources,
    cells: Sequence[str] | None,
    targets: Sequence[str] | None,
) -> list[ArchiveInfo]:
    """The committed archives, oldest first, each with the targets that hold it."""
    names = (
        [validate_cell_name(c) for c in dict.fromkeys(cells)]
        if cells
        else all_cells(config, res.targets)
    )
    tgts = res.chosen(targets)
    found: dict[ArchiveId, tuple[Sidecar, list[str]]] = {}
    errors: list[TargetError] = []
    for target in tgts:
        for cell in names:
            try:
                sidecars = target.archives(cell)
            except TargetError as exc:
                # One unreachable target must not hide what the others hold.
                log.warning("list.target_unreadable", target=target.name, cell=cell, error=str(exc))
                errors.append(exc)
                continue
            for sidecar in sidecars:
                found.setdefault(sidecar.id, (sidecar, []))[1].append(target.name)
    if errors and len(errors) == len(tgts) * len(names):
        raise errors[0]
    return [ArchiveInfo.of(*found[i]) for i in sorted(found, key=lambda i: (i.when, i.cell))]


def status(
    config: Config,
    res: Resources,
    cells: Sequence[str] | None,
    targets: Sequence[str] | None,
    max_age: float | None,
) -> StatusReport:
    """The report of :meth:`cellvault.Vault.status` (see there)."""
    names = cells_to_check(config, res.targets, cells)
    tgts = res.chosen(targets)
    limit = config.max_age if max_age is None else max_age
    if not limit > 0:
        raise ConfigError(f"max_age must be more than 0 hours, not {limit}")
    roots = {c.name: list(c.roots.values()) for c in config.cells}
    left = {name: debris(name, roots[name]) for name in names if name in roots}
    return build_status(names, tgts, res.state.read(), now=res.now(), max_age=limit, debris=left)


def write_metrics(
    config: Config, state: StateFile, path: str | os.PathLike[str] | None = None
) -> Path | None:
    """Rewrite the Prometheus textfile (*path*, else ``metrics_file``) from *state*.

    Returns the path written, or ``None`` when none is configured or it
    could not be written (logged: metrics never fail a run).
    """
    target = Path(path) if path is not None else config.metrics_file
    if target is None:
        return None
    try:
        write_textfile(target, state.read())
    except OSError as exc:
        log.warning("metrics.unwritable", path=str(target), error=error_text(exc))
        return None
    log.info("metrics.written", path=str(target))
    return target
