"""The restore operation: plan every cell, back up what is there, stage, load, hook, swap.

Every archive is planned first (:mod:`cellvault.ops.plan`); then, unless
restoring elsewhere or told not to, a safety backup of the live data runs as
a backup run of its own. Each cell is extracted into a staging directory
beside its destination and checked against its manifest (in parallel); once
every cell is staged, each cell's dumps are loaded and its restore hooks run,
one cell after the other; only then is each cell swapped into place
(:class:`~cellvault.swap.Swap`), and the health checks run. If any step
before the swap fails, the live data is left as it was.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, cast

import attrs

from ..archive import Selector
from ..dumpers.archive_io import load_staged_dumps
from ..dumpers.members import DUMPS_ROOT
from ..dumpers.staging import StagedLoad
from ..errors import (
    ArchiveCorrupt,
    ArchiveNotFound,
    CellvaultError,
    RestoreError,
    TargetError,
)
from ..extract import ArchiveStream, StagedTree
from ..journal import Journal
from ..log import get_logger
from ..progress import CountingReader
from ..report import CellReport, CellRestore, RestoreReport
from ..run import Run, error_text
from ..runlog import carry
from ..swap import Swap
from .excluded import carry_excluded
from .holds import hold_archives
from .listing import configured_cells
from .outcome import (
    DISCARDED,
    DISCARDED_SIDE,
    ROLLED_BACK,
    STAGED_IN_FILES,
    SWAPPED,
    CellParts,
    recover_cells,
    touched_text,
    undo_command,
)
from .plan import RestorePlan, fall_back, plan_restore
from .prerestore import check_dump_choices, dump_choice, loads_dumps, safety_backup
from .resources import Resources

__all__ = [
    "check_dump_choices",
    "dump_choice",
    "health_check",
    "prepare",
    "restore",
    "restore_failed",
    "safety_backup",
    "stage",
]

log = get_logger(__name__)

#: What to do when a dumper that cannot stage meets a skipped safety backup.
NOT_ATOMIC_HINT = (
    "run the restore without RESTORE_SKIP_PREBACKUP=1 (--skip-prebackup), so that a safety "
    "backup is the way back; or restore the cell elsewhere with --into; or configure the "
    "dumper to stage (docs/dumpers.md says how for each type)"
)

NOT_ATOMIC_INTO_HINT = (
    "run the restore without RESTORE_SKIP_PREBACKUP=1 (--skip-prebackup), so that a safety "
    "backup is the way back; or load no dump (--no-dumps: they are kept beside the restored "
    "files); or configure the dumper to stage (docs/dumpers.md says how for each type)"
)

#: The staged dumps' folder inside a cell's staging directory.
DUMPS_STAGE = ".cellvault-dumps"


def restore(
    run: Run,
    res: Resources,
    select: str | Selector,
    *,
    cells: Sequence[str] | None = None,
    into: str | os.PathLike[str] | None = None,
    skip_prebackup: bool = False,
    source: Sequence[str] | None = None,
    allow_external_links: bool = False,
    load_dumps: bool | Sequence[str] | None = None,
    dump_options: Mapping[str, Mapping[str, Any]] | None = None,
    keep_excluded: bool = True,
) -> RestoreReport:
    """The operation of :meth:`cellvault.Vault.restore` (see there), as *run*."""
    selector = select if isinstance(select, Selector) else Selector.parse(select)
    started = time.monotonic()
    into_path = Path(into).expanduser().absolute() if into is not None else None
    sources = res.chosen(source)
    names = (
        list(dict.fromkeys(cells))
        if cells
        else [c.name for c in configured_cells(run.config, None)]
    )
    epoch = res.fence.current()
    plans = [
        plan_restore(run.config, name, selector, sources, into_path, epoch=epoch) for name in names
    ]
    check_dump_choices(res, plans, load_dumps, dump_options)
    log.info("restore.planned", run=run.id, archives=[str(p.sidecar.id) for p in plans])
    run.emit("restore.planned", archives=[str(p.sidecar.id) for p in plans])
    for p in plans:
        # The progress totals: the bytes of every archive read, files of the newest.
        run.expect(
            cells=1,
            bytes=sum(s.size for s in (*p.chain, p.sidecar)),
            files=p.sidecar.files,
            cell=p.cell.name,
        )
    # Prune keeps what this restore reads until it is done.
    with hold_archives(run, plans):
        return _restore_held(
            run,
            res,
            plans,
            names,
            into_path,
            skip_prebackup,
            allow_external_links,
            dump_choice(load_dumps, into_path),
            dump_options or {},
            started,
            keep_excluded,
        )


def _restore_held(
    run: Run,
    res: Resources,
    plans: Sequence[RestorePlan],
    names: Sequence[str],
    into_path: Path | None,
    skip_prebackup: bool,
    allow_external_links: bool,
    only: Sequence[str] | None,
    dump_options: Mapping[str, Mapping[str, Any]],
    started: float,
    keep_excluded: bool = True,
) -> RestoreReport:
    # An earlier restore of these cells that was killed is settled first.
    recovered = recover_cells(run, plans, dumpers=res.dumpers) if into_path is None else ()
    taken: dict[str, CellReport] = {}
    # In place, or --into with dumps to load: live data (the databases at least) is replaced.
    live = into_path is None or loads_dumps(res, plans, only)
    if live and not skip_prebackup:
        taken = safety_backup(run, res, plans)
    safety = {cell: pre.archive or "" for cell, pre in taken.items()}
    work = _Restore(
        run,
        res,
        plans,
        into_path,
        allow_external_links,
        only,
        dump_options,
        safety,
        skipped=live and skip_prebackup,
        keep_excluded=keep_excluded,
    )
    try:
        error = work()
    except RestoreError as exc:
        error = str(exc)
        run.fail("restore", error)
    report = RestoreReport(
        cells=tuple(
            _with_safety_warnings(work.results[n], taken) for n in names if n in work.results
        ),
        duration=time.monotonic() - started,
        error=error,
        recovered=tuple(r.describe() for r in recovered),
    )
    run.notify("cellvault_after_restore", report=report)
    log.info("restore.finished", run=run.id, ok=report.ok, duration=round(report.duration, 3))
    run.emit("restore.finished", ok=report.ok)
    return report


def _with_safety_warnings(result: CellRestore, taken: Mapping[str, CellReport]) -> CellRestore:
    """*result*, warned of what its safety backup lacks (a dump that failed, a missing root)."""
    pre = taken.get(result.cell)
    if pre is None or not pre.warnings:
        return result
    lacks = tuple(f"safety backup {pre.archive}: {w}" for w in pre.warnings)
    return attrs.evolve(result, warnings=(*lacks, *result.warnings))


@attrs.define
class _Restore:
    """Stage, load, hook and swap the planned cells; the results fill :attr:`results`."""

    run: Run
    res: Resources
    plans: Sequence[RestorePlan]
    into: Path | None
    allow_external_links: bool
    only: Sequence[str] | None
    options: Mapping[str, Mapping[str, Any]]
    safety: Mapping[str, str]
    skipped: bool = False
    keep_excluded: bool = True
    results: dict[str, CellRestore] = attrs.Factory(dict)
    swapped_sides: list[StagedLoad] = attrs.Factory(list)
    parts: dict[str, CellParts] = attrs.Factory(dict)
    journals: dict[str, Journal] = attrs.Factory(dict)
    sides: dict[str, list[StagedLoad]] = attrs.Factory(dict)

    def __call__(self) -> str | None:
        """Restore; return why the restore was aborted (``None`` when it was not)."""
        for plan in self.plans:
            name = plan.cell.name
            self.parts[name] = CellParts.of(
                plan,
                [d.name for d in self.res.dumpers.get(name, ())],
                self.safety.get(name),
                self.skipped,
                self.into is not None,
            )
        staged = self._stage_all()
        for plan, swap in staged:
            self.parts[plan.cell.name].files("staged (not yet live)")
            if self.into is None:
                # Written before any live data is touched: a kill from here on is settled
                # by the next run (cellvault.journal).
                self.journals[plan.cell.name] = Journal.start(
                    plan.cell.name, str(plan.sidecar.id), swap, self.safety.get(plan.cell.name)
                )
        if len(staged) == len(self.plans):
            # Every cell is extracted and checked: load dumps and run the restore
            # hooks, cell by cell, stopping at the first that fails.
            for plan, swap in staged:
                refused = self._prepare(plan, swap)
                if refused is not None:
                    self.results[plan.cell.name] = refused
                    break
        if len(staged) == len(self.plans) and not self.results:
            # Everything is staged, loaded and hooked: only now touch live data.
            if self.into is None and self.keep_excluded:
                self._carry_excluded(staged)
            self._swap_in(staged)
            return None
        return self._abort(staged)

    def _carry_excluded(self, staged: list[tuple[RestorePlan, Swap]]) -> None:
        """Link the live paths each cell excludes into its staged tree, so the swap keeps them."""
        for plan, swap in staged:
            kept = sum(
                carry_excluded(plan.cell, dest, swap.placed.get(root, swap.staging / root))
                for root, dest in swap.dests.items()
            )
            if kept:
                self.parts[plan.cell.name].states["excluded paths"] = (
                    f"{kept} live path(s) the cell's exclude rules leave out kept in place"
                )

    def _prepare(self, plan: RestorePlan, swap: Swap) -> CellRestore | None:
        parts, journal = self.parts[plan.cell.name], self.journals.get(plan.cell.name)

        def loading(dumper: str) -> None:
            if self.skipped:
                # Without a safety backup, a load into the live store has no way back.
                raise RestoreError(
                    parts.refuse(dumper),
                    hint=NOT_ATOMIC_HINT if self.into is None else NOT_ATOMIC_INTO_HINT,
                )
            if journal is not None:
                journal.loading(dumper)
            parts.loading(dumper)

        def loaded(dumper: str) -> None:
            if journal is not None:
                journal.loaded(dumper)
            parts.done_loading(dumper)

        sides = self.sides.setdefault(plan.cell.name, [])

        def staged(side: StagedLoad, loading: bool = False) -> None:
            if journal is not None:
                more = [side.state()] if loading and side.side else []
                journal.staged([s.state() for s in sides if s.side] + more)
            if not loading:
                self.run.emit("restore.dump_staged", cell=plan.cell.name, dumper=side.dumper)

        refused = prepare(
            self.run,
            self.res,
            plan,
            swap,
            self.only,
            self.options,
            on_loading=loading,
            on_loaded=loaded,
            sides=sides,
            on_staged=staged,
            on_side=functools.partial(staged, loading=True),
            not_staged=parts.why,
        )
        for side in sides:
            parts.states[f"dump:{side.dumper}"] = (
                f"staged into {side.side} (not yet live)" if side.side else STAGED_IN_FILES
            )
        return None if refused is None else self._with_parts(refused)

    def _with_parts(self, result: CellRestore) -> CellRestore:
        """*result* with the cell's parts, safety backup and undo command."""
        safety = self.safety.get(result.cell)
        return attrs.evolve(
            result,
            parts=dict(self.parts[result.cell].states),
            safety_backup=safety,
            undo=undo_command(result.cell, safety),
        )

    def _stage_all(self) -> list[tuple[RestorePlan, Swap]]:
        def stage_one(plan: RestorePlan) -> Swap | CellRestore:
            try:
                return stage(
                    self.run, plan, allow_external_links=self.allow_external_links, into=self.into
                )
            finally:
                self.run.advance(plan.cell.name, finished=True)

        with ThreadPoolExecutor(
            max_workers=self.run.config.jobs, thread_name_prefix="restore"
        ) as pool:
            outcomes = list(pool.map(carry(stage_one), self.plans))
        staged: list[tuple[RestorePlan, Swap]] = []
        for plan, outcome in zip(self.plans, outcomes, strict=True):
            if isinstance(outcome, CellRestore):
                self.parts[plan.cell.name].files(f"not staged: {outcome.stage} failed")
                self.results[plan.cell.name] = self._with_parts(outcome)
            else:
                staged.append((plan, outcome))
        return staged

    def _swap_in(self, staged: list[tuple[RestorePlan, Swap]]) -> None:
        done: list[tuple[RestorePlan, Swap]] = []
        try:
            for plan, swap in staged:
                name = plan.cell.name
                journal = self.journals.get(name)
                if journal is not None:
                    journal.phase("swapping")
                done.append((plan, swap))  # a failing commit rolls its own roots back
                self._swap_sides(name, journal)
                swap.commit(on_root=functools.partial(self._root_swapped, name))
                self.parts[name].files(SWAPPED)
                if journal is not None:
                    journal.phase("swapped")
                self.run.emit("restore.swapped", cell=name, archive=str(plan.sidecar.id))
        except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
            self._unswap(staged, done)
            raise RestoreError(
                f"swapping the restored data into place failed: {error_text(exc)}; "
                + self._rollback_text()
            ) from None
        for plan, swap in done:
            for side in self.sides.get(plan.cell.name, ()):
                side.commit()
            swap.cleanup()
            if plan.cell.name in self.journals:
                self.journals.pop(plan.cell.name).close()
        for plan, swap in staged:
            health = health_check(self.run, plan, self.into)
            self.results[plan.cell.name] = self._with_parts(
                CellRestore(
                    cell=plan.cell.name,
                    ok=health is None,
                    archive=str(plan.sidecar.id),
                    target=plan.target.name,
                    destination=tuple(str(d) for d in swap.dests.values()),
                    stage=None if health is None else "health",
                    error=health,
                    files=swap.files,
                    bytes=swap.bytes,
                    duration=swap.duration,
                    warnings=swap.warnings,
                )
            )

    def _root_swapped(self, cell: str, root: str) -> None:
        self.run.emit("restore.root_swapped", cell=cell, root=root)

    def _swap_sides(self, cell: str, journal: Journal | None) -> None:
        """Swap the cell's staged databases in, one short step each (before its files)."""
        for side in self.sides.get(cell, ()):
            if not side.side:
                continue  # written into the staged files: swapped with them
            if journal is not None:
                journal.swapping(side.dumper)
            side.swap()
            self.swapped_sides.append(side)
            self.parts[cell].states[f"dump:{side.dumper}"] = f"swapped in: {side.what}"
            if journal is not None:
                journal.loaded(side.dumper)
            self.run.emit("restore.dump_swapped", cell=cell, dumper=side.dumper)

    def _unswap_sides(self) -> None:
        """Put every swapped database back, then drop every side object."""
        for side in reversed(self.swapped_sides):
            cell = next((c for c, sides in self.sides.items() if side in sides), "")
            journal = self.journals.get(cell)
            try:
                if journal is not None:
                    journal.phase("rolling back")
                    journal.swapping(side.dumper)
                side.unswap()
                if journal is not None:
                    journal.unswapped(side.dumper)
                state = f"swapped in, then rolled back: {side.what} is back"
            except Exception as exc:  # noqa: BLE001 - reported in the cell's parts
                state = f"rollback failed, {side.what} holds the archive: {error_text(exc)}"
            for parts in self.parts.values():
                if f"dump:{side.dumper}" in parts.states and side in self.sides.get(parts.cell, ()):
                    parts.states[f"dump:{side.dumper}"] = state
        self.swapped_sides.clear()
        self._discard_sides(rolled_back=True)

    def _discard_sides(self, rolled_back: bool = False) -> None:
        for cell, sides in self.sides.items():
            for side in sides:
                side.discard()
                key = f"dump:{side.dumper}"
                if side.side and not rolled_back:
                    self.parts[cell].states[key] = DISCARDED_SIDE

    def _unswap(
        self, staged: list[tuple[RestorePlan, Swap]], done: list[tuple[RestorePlan, Swap]]
    ) -> None:
        """After a failed swap: every cell's roots back to live, staged data removed, reported."""
        self._unswap_sides()
        for plan, swap in reversed(done):
            swap.rollback()
            parts = self.parts[plan.cell.name]
            parts.files(ROLLED_BACK)
            for root, where in swap.stranded.items():
                parts.states[f"files:{root}"] = (
                    f"rollback failed: the live files are kept at {where}, "
                    f"the restored ones are at {swap.dests[root]}"
                )
        for plan, swap in staged:
            swap.discard()  # keeps what a rollback could not put back
            name = plan.cell.name
            if (plan, swap) not in done:
                self.parts[name].files(DISCARDED)
            journal = self.journals.pop(name, None)
            if journal is not None and not swap.stranded:
                journal.close()
            self.results[name] = self._with_parts(
                CellRestore(
                    cell=name,
                    ok=False,
                    archive=str(plan.sidecar.id),
                    target=plan.target.name,
                    stage="swap",
                    error="not restored: the swap into place failed",
                )
            )

    def _rollback_text(self) -> str:
        stranded = [
            f"cell {c}: {state}"
            for c, p in self.parts.items()
            for part, state in p.states.items()
            if part.startswith("files:") and state.startswith("rollback failed")
        ]
        text = "; ".join(stranded) if stranded else "every cell's live files are back in place"
        dbs = touched_text(self.parts, {c: undo_command(c, s) for c, s in self.safety.items()})
        return text + ("; " + dbs if dbs else "")

    def _abort(self, staged: list[tuple[RestorePlan, Swap]]) -> str:
        failures = "; ".join(f"cell {c}: {r.error}" for c, r in self.results.items() if not r.ok)
        dbs = touched_text(self.parts, {c: undo_command(c, s) for c, s in self.safety.items()})
        if dbs:
            error = f"restore aborted: {failures}; {dbs}"
        else:
            # Checked: no dump was loaded and no root swapped.
            error = "restore aborted before any live data was touched: " + failures
        self._discard_sides()
        for plan, swap in staged:
            swap.discard()
            name = plan.cell.name
            self.parts[name].files(DISCARDED)
            journal = self.journals.pop(name, None)
            if journal is not None:
                journal.close()
            if name in self.results:
                self.results[name] = self._with_parts(self.results[name])
                continue  # the cell whose load or hook failed
            self.results[name] = self._with_parts(
                CellRestore(
                    cell=name,
                    ok=False,
                    archive=str(plan.sidecar.id),
                    target=plan.target.name,
                    stage="aborted",
                    error="not swapped in because another cell failed",
                )
            )
        return error


def stage(
    run: Run, plan: RestorePlan, allow_external_links: bool, into: Path | None = None
) -> Swap | CellRestore:
    """Extract a planned cell (its chain first) beside its destination and check it.

    Returns the :class:`Swap` that puts it in place, or the cell's failure
    (alerted; its staging directory is removed).
    """
    started = time.monotonic()
    name = plan.cell.name
    swap: Swap | None = None
    step = "staging"
    try:
        dests = dict(plan.dests)
        has_dumps = plan.manifest.has_under(DUMPS_ROOT)
        if has_dumps and into is not None:
            # Restored elsewhere, the dumps are kept beside the cell's folder.
            dests[DUMPS_STAGE] = into / f"{name}.dumps"
        # An archive without files (a safety backup of a cell whose directory was gone)
        # still stages its dumps beside the cell's first path.
        swap = Swap.create(
            dests,
            str(plan.sidecar.id),
            near=next(iter(plan.cell.roots.values())),
            cell=name,
            in_place=into is None,
        )
        step = "fetch"
        tree = StagedTree(
            staging=swap.staging,
            manifest=plan.manifest,
            archive=str(plan.sidecar.id),
            allow_external_links=allow_external_links,
            dumps=swap.staging / DUMPS_STAGE if has_dumps else None,
        )
        tree.prepare()
        for sidecar in [*plan.chain, plan.sidecar]:
            run.emit("restore.reading", cell=name, archive=str(sidecar.id), target=plan.target.name)
            with plan.target.open_archive(sidecar) as raw:
                counted = CountingReader(raw, lambda n: run.advance(name, bytes=n, add=True))
                tree.take(ArchiveStream(cast(IO[bytes], counted), sidecar, plan.target.name))
            run.emit("restore.fetched", cell=name, archive=str(sidecar.id), target=plan.target.name)
        step = "check"
        tree.finish()
        swap.place()
    except Exception as exc:  # noqa: BLE001 - reported and alerted by restore_failed
        if swap is not None:
            swap.discard()
        if step != "staging" and isinstance(exc, ArchiveCorrupt | TargetError):
            other = _staged_elsewhere(run, plan, exc, allow_external_links, into)
            if other is not None:
                return other
        return restore_failed(run, plan, step, exc, time.monotonic() - started)
    swap.files, swap.bytes, swap.duration = tree.files, tree.bytes, time.monotonic() - started
    swap.warnings = tuple(tree.warnings)
    return swap


def _staged_elsewhere(
    run: Run, plan: RestorePlan, exc: CellvaultError, allow_external_links: bool, into: Path | None
) -> Swap | CellRestore | None:
    """Stage *plan* again from the next target holding its archive, the copy read being damaged.

    Only the staging directory was written (and is gone); the live data is
    untouched. ``None`` when no other target holds the archive and its chain.

    The copy is read under a read lease on that target too (as the first one
    was), so a prune there keeps the archive and its chain meanwhile; a
    target where they were pruned since the planning is passed over.
    """
    other = fall_back(plan)
    while other is not None:
        try:
            held = hold_archives(run, [other])
        except ArchiveNotFound as gone:
            log.warning(
                "restore.copy_unusable",
                target=other.target.name,
                archive=str(plan.sidecar.id),
                error=gone.message,
            )
            other = fall_back(other)
            continue
        warning = (
            f"the copy of archive {plan.sidecar.id} on target {plan.target.name} is damaged or "
            f"missing ({exc.message}); restored from target {other.target.name} instead"
        )
        log.warning(
            "restore.copy_damaged",
            cell=plan.cell.name,
            archive=str(plan.sidecar.id),
            target=plan.target.name,
            error=exc.message,
            instead=other.target.name,
        )
        with held:
            result = stage(run, other, allow_external_links, into)
        if isinstance(result, Swap):
            result.warnings = (warning, *result.warnings)
        return result
    return None


def prepare(
    run: Run,
    res: Resources,
    plan: RestorePlan,
    swap: Swap,
    only: Sequence[str] | None,
    options: Mapping[str, Mapping[str, Any]],
    *,
    on_loading: Callable[[str], None] | None = None,
    on_loaded: Callable[[str], None] | None = None,
    sides: list[StagedLoad] | None = None,
    on_staged: Callable[[StagedLoad], None] | None = None,
    on_side: Callable[[StagedLoad], None] | None = None,
    not_staged: dict[str, str] | None = None,
) -> CellRestore | None:
    """Load a staged cell's dumps, then run its restore hooks; return its failure, if any.

    *on_loading* and *on_loaded* are called with each dumper's name before
    and after its load (see :func:`~cellvault.dumpers.archive_io.load_staged_dumps`).
    """
    started = time.monotonic()
    name = plan.cell.name
    dumpers = res.dumpers.get(name, ())
    mine = {d.name for d in dumpers}
    dumps = swap.placed.get(DUMPS_STAGE, swap.staging / DUMPS_STAGE)
    scratch = swap.staging / ".cellvault-load"
    step = "load"
    if dumpers:
        run.emit(
            "restore.loading",
            cell=name,
            archive=str(plan.sidecar.id),
            dumpers=[d.name for d in dumpers],
        )
    text = f"{name}: loading dumps ({', '.join(d.name for d in dumpers)})"
    try:
        with run.step(name, text, bytes=_tree_size(dumps)) if dumpers else _no_step() as read:
            loaded = load_staged_dumps(
                cell=plan.cell,
                meta=plan.sidecar.meta,
                dumpers=dumpers,
                dumps=dumps,
                spool=scratch,
                only=None if only is None else [n for n in only if n in mine],
                options={k: v for k, v in options.items() if k in mine},
                staged_roots={
                    plan.cell.roots[r]: swap.placed.get(r, swap.staging / r)
                    for r in plan.dests
                    if r in plan.cell.roots
                },
                on_loading=on_loading,
                on_loaded=on_loaded,
                sides=sides,
                on_staged=on_staged,
                on_read=read,
                on_start=lambda d: run.emit("restore.dump_loading", cell=name, dumper=d),
                on_side=on_side,
                not_staged=not_staged,
            )
        shutil.rmtree(scratch, ignore_errors=True)
        if loaded:
            run.emit("restore.loaded", cell=name, archive=str(plan.sidecar.id), dumps=loaded)
        step = "hook"
        run.plugins.hook.cellvault_restore_cell(
            cell=plan.cell, meta=plan.sidecar.meta, staging=swap.staging, dumps=dumps
        )
    except Exception as exc:  # noqa: BLE001 - reported and alerted by restore_failed
        shutil.rmtree(scratch, ignore_errors=True)
        return restore_failed(run, plan, step, exc, swap.duration + time.monotonic() - started)
    swap.duration += time.monotonic() - started
    return None


def _tree_size(folder: Path) -> int:
    """The bytes of the files under *folder* (the staged dumps a load will read)."""
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@contextlib.contextmanager
def _no_step() -> Iterator[None]:
    yield None


def health_check(run: Run, plan: RestorePlan, into: Path | None) -> str | None:
    """Run the health-check hooks on a restored cell; return the failure (alerted), if any."""
    hook = run.plugins.hook.cellvault_health_check
    if not hook.get_hookimpls():
        return None
    name = plan.cell.name
    links: Path | None = None
    if into is not None:
        root = into / name
    else:
        # The hook sees root/<root name> for each path, as in a drill: links to the live paths.
        links = root = run.layout.health(run.id, name)
        root.mkdir(parents=True)
        for rname, dest in plan.dests.items():
            (root / rname).symlink_to(dest)
    try:
        hook(cell=plan.cell, meta=plan.sidecar.meta, root=root)
    except Exception as exc:  # noqa: BLE001 - a boundary: reported as a CellvaultError or logged
        error = f"health check failed after the restore: {error_text(exc)}"
        _fail(run, plan, "health", error)
        return error
    finally:
        if links is not None:
            shutil.rmtree(links, ignore_errors=True)
            with contextlib.suppress(OSError):
                links.parent.rmdir()
    log.info("restore.healthy", run=run.id, cell=name, archive=str(plan.sidecar.id))
    return None


def restore_failed(
    run: Run, plan: RestorePlan, step: str, exc: BaseException, duration: float
) -> CellRestore:
    """Report and alert one cell's failed restore at *step* (nothing live was touched)."""
    name = plan.cell.name
    error = error_text(exc)
    if not isinstance(exc, CellvaultError):
        log.exception("restore.crashed", cell=name, stage=step)
    _fail(run, plan, "restore", error)
    return CellRestore(
        cell=name,
        ok=False,
        archive=str(plan.sidecar.id),
        target=plan.target.name,
        stage=step,
        error=error,
        duration=duration,
    )


def _fail(run: Run, plan: RestorePlan, stage: str, error: str) -> None:
    """Alert a restore failure of *plan*'s cell at *stage*."""
    run.fail(
        stage,
        error,
        cell=plan.cell.name,
        target=plan.target.name,
        archive=str(plan.sidecar.id),
        operation="restore",
    )
