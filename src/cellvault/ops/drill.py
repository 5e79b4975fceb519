"""The ``drill`` verify level: restore a cell into scratch space, check it, time it, remove it."""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..archive import ArchiveId, Selector
from ..dumpers.archive_io import load_staged_dumps
from ..dumpers.base import Dumper
from ..dumpers.members import DUMPS_ROOT
from ..dumpers.staging import StagedLoad
from ..errors import CellvaultError
from ..extract import ArchiveStream, StagedTree
from ..integrity import compare_tree
from ..log import get_logger
from ..report import VerifyResult
from ..run import Run, error_text
from ..targets.base import Target
from .plan import RestorePlan, plan_restore

__all__ = ["drill"]

log = get_logger(__name__)


def drill(
    run: Run,
    target: Target,
    cell: str,
    selector: Selector,
    dumpers: Sequence[Dumper] = (),
) -> VerifyResult:
    """Restore *cell* from *target* into a scratch directory, check it, time it, remove it.

    The archive *selector* picks (and its chain) is restored under the
    backup directory (:meth:`~cellvault.layout.BackupDirLayout.drill`), the
    tree compared with the manifest, the ``cellvault_health_check`` hooks
    run on it; the result's ``rto`` is how long it took. Each of *dumpers*
    that can stage (:meth:`~cellvault.dumpers.Dumper.stage`) loads its dump
    into a scratch object (a scratch database on its server), which exists
    while the health checks run and is dropped after: the RTO includes the
    loads. A dumper that cannot stage is not loaded, and the result says so.
    A failure at any step is alerted (operation ``verify``) and in the result.
    """
    return _Drill(run, target, cell, selector, tuple(dumpers))()


@attrs.define
class _Drill:
    run: Run
    target: Target
    cell: str
    selector: Selector
    dumpers: tuple[Dumper, ...] = ()
    started: float = attrs.field(factory=time.monotonic)
    #: What the result names: the planned archive, once it is known.
    archive: str = ""
    step: str = "plan"
    dumps: dict[str, str] = attrs.Factory(dict)

    def __call__(self) -> VerifyResult:
        scratch = self.run.layout.drill(self.run.id, self.target.name, self.cell)
        self.archive = f"cell_{self.cell}"
        try:
            tree, compared = self._restore(scratch)
            rto = time.monotonic() - self.started
        except Exception as exc:  # noqa: BLE001 - alerted and reported in the result
            return self._failed(exc)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                scratch.parent.rmdir()
        log.info(
            "drill.ok",
            run=self.run.id,
            cell=self.cell,
            target=self.target.name,
            archive=self.archive,
            files=tree.files,
            bytes=tree.bytes,
            paths=compared,
            rto=round(rto, 3),
        )
        return VerifyResult(
            archive=self.archive,
            target=self.target.name,
            ok=True,
            level="drill",
            members=compared,
            files=tree.files,
            bytes=tree.bytes,
            rto=rto,
            duration=time.monotonic() - self.started,
            dumps=dict(self.dumps),
        )

    def _restore(self, scratch: Path) -> tuple[StagedTree, int]:
        """Restore, compare, health-check; return the tree and the paths compared."""
        plan = plan_restore(self.run.config, self.cell, self.selector, [self.target], scratch)
        self.archive = str(plan.sidecar.id)
        root = scratch / self.cell
        self.step = "fetch"
        has_dumps = any(e.path.startswith(f"{DUMPS_ROOT}/") for e in plan.manifest)
        dumps = scratch / ".cellvault-dumps"
        tree = StagedTree(
            staging=root,
            manifest=plan.manifest,
            archive=self.archive,
            dumps=dumps if has_dumps else None,
        )
        tree.prepare()
        for sidecar in [*plan.chain, plan.sidecar]:
            with self.target.open_archive(sidecar) as raw:
                tree.take(ArchiveStream(raw, sidecar, self.target.name))
        self.step = "check"
        tree.finish()
        compared = compare_tree(root, plan.manifest)
        sides: list[StagedLoad] = []
        try:
            if has_dumps and self.dumpers:
                self.step = "load dumps"
                self._load(plan, root, dumps, scratch, sides)
            self.step = "health check"
            # The hook spec may come from a newer cellvault than a plugin manager built by hand.
            if hasattr(self.run.plugins.hook, "cellvault_health_check"):
                self.run.plugins.hook.cellvault_health_check(
                    cell=plan.cell, meta=plan.sidecar.meta, root=root
                )
        finally:
            for side in sides:
                side.discard()
        return tree, compared

    def _load(
        self, plan: RestorePlan, root: Path, dumps: Path, scratch: Path, sides: list[StagedLoad]
    ) -> None:
        """Load every dump that can stage into a scratch object (dropped by the caller)."""
        skipped: list[str] = []
        why: dict[str, str] = {}
        load_staged_dumps(
            cell=plan.cell,
            meta=plan.sidecar.meta,
            dumpers=self.dumpers,
            dumps=dumps,
            spool=scratch / ".cellvault-load",
            staged_roots={
                plan.cell.roots[r]: root / r
                for r in plan.sidecar.meta.roots
                if r in plan.cell.roots
            },
            sides=sides,
            no_live=skipped,
            not_staged=why,
        )
        for side in sides:
            self.dumps[side.dumper] = f"loaded into {side.side or 'the drill tree'}, then dropped"
        for name in skipped:
            self.dumps[name] = (
                f"not loaded: this dumper cannot stage into a scratch object ({why.get(name)})"
            )

    def _failed(self, exc: Exception) -> VerifyResult:
        # A health check that raises is a verdict on the data, not a crash.
        if not isinstance(exc, CellvaultError) and self.step != "health check":
            log.exception(
                "drill.crashed",
                run=self.run.id,
                cell=self.cell,
                target=self.target.name,
                step=self.step,
            )
        error = f"drill failed at {self.step}: {error_text(exc)}"
        self.run.fail(
            "drill",
            error,
            cell=self.cell,
            target=self.target.name,
            archive=self.archive if ArchiveId.is_id(self.archive) else None,
            operation="verify",
        )
        return VerifyResult(
            archive=self.archive,
            target=self.target.name,
            ok=False,
            level="drill",
            error=error,
            duration=time.monotonic() - self.started,
        )
