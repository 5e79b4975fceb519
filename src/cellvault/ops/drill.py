"""The ``drill`` verify level: restore a cell into scratch space, check it, time it, remove it."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import attrs

from ..archive import ArchiveId, Selector
from ..errors import CellvaultError
from ..extract import ArchiveStream, StagedTree
from ..integrity import compare_tree
from ..log import get_logger
from ..report import VerifyResult
from ..run import Run, error_text
from ..targets.base import Target
from .plan import plan_restore

__all__ = ["drill"]

log = get_logger(__name__)


def drill(run: Run, target: Target, cell: str, selector: Selector) -> VerifyResult:
    """Restore *cell* from *target* into a scratch directory, check it, time it, remove it.

    The archive *selector* picks (and its chain) is restored under the
    backup directory (:meth:`~cellvault.layout.BackupDirLayout.drill`), the
    tree compared with the manifest, the ``cellvault_health_check`` hooks
    run on it; the result's ``rto`` is how long it took. A failure at any
    step is alerted (operation ``verify``) and in the result.
    """
    return _Drill(run, target, cell, selector)()


@attrs.define
class _Drill:
    run: Run
    target: Target
    cell: str
    selector: Selector
    started: float = attrs.field(factory=time.monotonic)
    #: What the result names: the planned archive, once it is known.
    archive: str = ""
    step: str = "plan"

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
        )

    def _restore(self, scratch: Path) -> tuple[StagedTree, int]:
        """Restore, compare, health-check; return the tree and the paths compared."""
        plan = plan_restore(self.run.config, self.cell, self.selector, [self.target], scratch)
        self.archive = str(plan.sidecar.id)
        root = scratch / self.cell
        self.step = "fetch"
        tree = StagedTree(staging=root, manifest=plan.manifest, archive=self.archive)
        tree.prepare()
        for sidecar in [*plan.chain, plan.sidecar]:
            with self.target.open_archive(sidecar) as raw:
                tree.take(ArchiveStream(raw, sidecar, self.target.name))
        self.step = "check"
        tree.finish()
        compared = compare_tree(root, plan.manifest)
        self.step = "health check"
        # The hook spec may come from a newer cellvault than a plugin manager built by hand.
        if hasattr(self.run.plugins.hook, "cellvault_health_check"):
            self.run.plugins.hook.cellvault_health_check(
                cell=plan.cell, meta=plan.sidecar.meta, root=root
            )
        return tree, compared

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
