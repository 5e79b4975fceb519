"""Restoring chosen paths of a cell: one file, a directory, a few globs.

The point is chosen and planned as for a whole restore
(:func:`cellvault.ops.plan.plan_restore`). The paths matching the patterns
(and everything under a matching directory) are the *selection*; its
topmost paths are the *units* that are swapped, each as a whole: a matched
directory is replaced by its archived self (files added since go with the
old copy). Only the archives of the chain that hold selected files are
opened, and each is read only up to the last member wanted from it. Every
file is checked against the manifest as it is written into a staging
directory beside the cell's root; only when all are staged is each unit
swapped into place (one atomic exchange per unit where the kernel can), and
a failure on the way puts back every unit already swapped.

What was replaced is never deleted: the staging directory, holding the old
copies where the new ones were staged, is kept beside the root as
``.cellvault-replaced-<cell>-<run>`` and named in the report. The rest of
the live tree is not touched. No dumps are loaded and no restore hooks run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, cast

import attrs

from ..archive import Selector
from ..errors import CellvaultError, RestoreError
from ..extract import ArchiveStream, StagedTree
from ..log import get_logger
from ..manifest import Manifest
from ..progress import CountingReader
from ..report import Report
from ..run import Run, error_text
from ..swap import exchange
from .browse import PathMatcher, cell_path, config_roots, member_path, open_point
from .plan import RestorePlan
from .resources import Resources

__all__ = ["PathRestoreReport", "restore_paths", "select_paths"]

log = get_logger(__name__)


@attrs.frozen
class PathRestoreReport(Report):
    """What :meth:`cellvault.Vault.restore_paths` did."""

    cell: str
    ok: bool
    archive: str | None = None
    target: str | None = None
    #: The cell-relative paths put in place, each with everything under it.
    paths: tuple[str, ...] = ()
    #: Where each went.
    destinations: tuple[str, ...] = ()
    #: The archives opened (only those that hold selected files).
    archives_read: tuple[str, ...] = ()
    #: Where what was replaced is kept (``None`` when nothing was replaced).
    replaced_kept_in: str | None = None
    files: int = 0
    bytes: int = 0
    bytes_read: int = 0
    duration: float = 0.0
    stage: str | None = None
    error: str | None = None


def select_paths(manifest: Manifest, matcher: PathMatcher) -> tuple[list[str], Manifest]:
    """The units (topmost matching cell paths) and the manifest of everything under them."""
    units: list[str] = []
    sub = Manifest(archive=manifest.archive)
    # Tree order: a directory, then everything under it, then its next sibling.
    for entry in sorted(manifest, key=lambda e: e.path.split("/")):
        path = cell_path(entry.path)
        if path is None:
            continue
        under = units and (path + "/").startswith(units[-1] + "/")
        if under:
            sub.add(entry)
        elif matcher.matches(path):
            units.append(path)
            sub.add(entry)
    return units, sub


def restore_paths(
    run: Run,
    res: Resources,
    cell: str,
    patterns: Sequence[str],
    select: str | Selector = "latest",
    *,
    into: str | os.PathLike[str] | None = None,
    source: Sequence[str] | None = None,
    allow_external_links: bool = False,
) -> PathRestoreReport:
    """The operation of :meth:`cellvault.Vault.restore_paths` (see there), as *run*."""
    started = time.monotonic()
    into_path = Path(into).expanduser().absolute() if into is not None else None
    matcher = PathMatcher(patterns, config_roots(run.config, cell))
    plan = open_point(run.config, res, cell, select, source, into=into_path)
    if into_path is None:
        # In place: the cell must be configured, with the roots the archive has.
        plan = attrs.evolve(plan, dests=_live_dests(run, cell, plan))
    units, sub = select_paths(plan.manifest, matcher)
    if not units:
        raise RestoreError(
            f"no path of archive {plan.sidecar.id} matches {matcher}",
            hint=f"list the point with 'cellvault ls {cell} --date {plan.sidecar.id}' "
            f"or search the history with 'cellvault find {cell} PATTERN'",
        )
    dests = {u: _dest(plan, u) for u in units}
    for unit, dest in dests.items():
        _check_parents(plan, unit, dest)
    run.emit("restore.planned", archives=[str(plan.sidecar.id)], paths=units)
    log.info(
        "restore.paths_planned", run=run.id, cell=cell, archive=str(plan.sidecar.id), paths=units
    )
    work = _PathRestore(run, plan, sub, dests, allow_external_links)
    try:
        work.stage()
        work.swap_in()
    except Exception as exc:
        work.discard()
        error = error_text(exc)
        if not isinstance(exc, CellvaultError):
            log.exception("restore.crashed", cell=cell, stage=work.step)
        run.fail(
            "restore",
            error,
            cell=cell,
            target=plan.target.name,
            archive=str(plan.sidecar.id),
            operation="restore",
        )
        return PathRestoreReport(
            cell=cell,
            ok=False,
            archive=str(plan.sidecar.id),
            target=plan.target.name,
            paths=tuple(units),
            archives_read=tuple(work.read),
            stage=work.step,
            error=f"{error}; the live tree was left as it was",
            duration=time.monotonic() - started,
        )
    kept = work.keep(cell, run.id)
    run.emit("restore.swapped", cell=cell, archive=str(plan.sidecar.id))
    return PathRestoreReport(
        cell=cell,
        ok=True,
        archive=str(plan.sidecar.id),
        target=plan.target.name,
        paths=tuple(units),
        destinations=tuple(str(d) for d in dests.values()),
        archives_read=tuple(work.read),
        replaced_kept_in=None if kept is None else str(kept),
        files=work.tree.files if work.tree else 0,
        bytes=work.tree.bytes if work.tree else 0,
        bytes_read=work.bytes_read,
        duration=time.monotonic() - started,
    )


def _live_dests(run: Run, cell: str, plan: RestorePlan) -> dict[str, Path]:
    roots = config_roots(run.config, cell)
    if not roots:
        raise RestoreError(
            f"cell {cell} is not configured, so it has no place to restore into",
            hint="restore its paths elsewhere with --into DIR",
        )
    return {r: roots[r] for r in plan.sidecar.meta.roots if r in roots}


def _dest(plan: RestorePlan, unit: str) -> Path:
    root, _, rest = unit.partition("/")
    if root not in plan.dests:
        raise RestoreError(
            f"archive {plan.sidecar.id} holds path {unit} under root {root}, "
            f"which cell {plan.cell.name} no longer has",
            hint="restore it into another directory with --into",
        )
    return plan.dests[root] / rest if rest else plan.dests[root]


def _check_parents(plan: RestorePlan, unit: str, dest: Path) -> None:
    """Refuse a destination under a live file or symbolic link (it would land elsewhere)."""
    root = plan.dests[unit.partition("/")[0]]
    above = dest.parent
    while above != root.parent and above != above.parent:
        try:
            mode = os.lstat(above).st_mode
        except FileNotFoundError:
            above = above.parent
            continue
        if not stat.S_ISDIR(mode):
            raise RestoreError(
                f"cannot restore {unit}: {above} is not a directory in the live tree "
                "(a file or symbolic link is there now)",
                hint="restore it elsewhere with --into DIR, or restore the directory above it",
            )
        above = above.parent


@attrs.define
class _PathRestore:
    """Stage the selection, then swap each unit in (and back out on failure)."""

    run: Run
    plan: RestorePlan
    sub: Manifest
    dests: dict[str, Path]
    allow_external_links: bool
    step: str = "staging"
    staging: Path | None = None
    tree: StagedTree | None = None
    read: list[str] = attrs.Factory(list)
    bytes_read: int = 0
    done: list[tuple[str, bool]] = attrs.Factory(list)
    made: list[Path] = attrs.Factory(list)

    def stage(self) -> None:
        first = next(iter(self.plan.dests.values()))
        first.parent.mkdir(parents=True, exist_ok=True)
        self.staging = first.parent / (
            f".cellvault-restore-{self.plan.sidecar.id}-{secrets.token_hex(4)}"
        )
        self.staging.mkdir(mode=0o700)
        tree = self.tree = StagedTree(
            staging=self.staging,
            manifest=self.sub,
            archive=str(self.plan.sidecar.id),
            allow_external_links=self.allow_external_links,
            partial=True,
        )
        tree.prepare()
        self.step = "fetch"
        needed = tree.holders()
        for sidecar in [*self.plan.chain, self.plan.sidecar]:
            if str(sidecar.id) not in needed:
                continue
            self.read.append(str(sidecar.id))
            with self.plan.target.open_archive(sidecar) as raw:
                counted = CountingReader(raw, self._count)
                tree.take(ArchiveStream(cast(IO[bytes], counted), sidecar, self.plan.target.name))
            self.run.emit(
                "restore.fetched",
                cell=self.plan.cell.name,
                archive=str(sidecar.id),
                target=self.plan.target.name,
            )
        self.step = "check"
        tree.finish()

    def _count(self, n: int) -> None:
        self.bytes_read += n

    def swap_in(self) -> None:
        assert self.staging is not None
        self.step = "swap"
        try:
            for unit, dest in self.dests.items():
                staged = self.staging / unit
                if dest.exists() or dest.is_symlink():
                    exchange(staged, dest)
                    self.done.append((unit, True))
                else:
                    self._make_parents(dest)
                    os.rename(staged, dest)
                    self.done.append((unit, False))
                log.info("restore.swapped", destination=str(dest))
        except Exception as exc:  # noqa: BLE001 - rolled back, then reported as a RestoreError
            self.rollback()
            raise RestoreError(
                f"swapping the restored paths into place failed: {error_text(exc)}"
            ) from None

    def _make_parents(self, dest: Path) -> None:
        missing = []
        above = dest.parent
        while not (above.exists() or above.is_symlink()):
            missing.append(above)
            above = above.parent
        for path in reversed(missing):
            path.mkdir(mode=0o700)
            self.made.append(path)
            # The archived directory's mode and time, when the point has it.
            entry = self.plan.manifest.get(member_path(self._unit_of(path)))
            if entry is not None and entry.type == "dir":
                os.chmod(path, entry.mode)
                os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns))
            else:
                os.chmod(path, 0o755)  # noqa: S103 - a directory, as mkdir -p makes it

    def _unit_of(self, path: Path) -> str:
        """The cell-relative path of a live *path* under one of the plan's roots."""
        for root, dest in self.plan.dests.items():
            if path == dest or dest in path.parents:
                rest = path.relative_to(dest).as_posix()
                return root if rest == "." else f"{root}/{rest}"
        return ""

    def rollback(self) -> None:
        assert self.staging is not None
        for unit, had_old in reversed(self.done):
            dest, staged = self.dests[unit], self.staging / unit
            try:
                if had_old:
                    exchange(staged, dest)
                else:
                    os.rename(dest, staged)
            except OSError as exc:
                log.error(
                    "restore.rollback_failed",
                    destination=str(dest),
                    kept=str(staged),
                    error=str(exc),
                )
        self.done.clear()
        for path in reversed(self.made):
            try:
                path.rmdir()
            except OSError:
                continue

    def discard(self) -> None:
        """After a failure: nothing is swapped in; delete what was staged."""
        if self.staging is not None and not self.done:
            shutil.rmtree(self.staging, ignore_errors=True)

    def keep(self, cell: str, run_id: str) -> Path | None:
        """Keep what was replaced beside the root; ``None`` (staging removed) when nothing was."""
        assert self.staging is not None
        if not any(had_old for _, had_old in self.done):
            shutil.rmtree(self.staging, ignore_errors=True)
            return None
        kept = self.staging.with_name(f".cellvault-replaced-{cell}-{run_id}")
        os.rename(self.staging, kept)
        log.info("restore.replaced_kept", cell=cell, path=str(kept))
        return kept
