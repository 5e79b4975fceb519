"""The hooks a cellvault plugin can implement.

A plugin is a module or object with functions named like these specs and
marked with :data:`hookimpl`. Built-in target types register through the very
same hooks. Third-party packages declare an entry point in the ``cellvault``
group; see ``docs/plugins.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .archive import ArchiveMeta
    from .cell import Cell
    from .report import CellReport, Failure, RestoreReport
    from .targets.base import Target, TargetSpec

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("cellvault")
#: Mark a plugin's function as the implementation of a cellvault hook.
hookimpl = pluggy.HookimplMarker("cellvault")


@hookspec(firstresult=True)
def cellvault_make_target(spec: TargetSpec) -> Target | None:
    """Build the target for *spec*, or return ``None`` if it is not yours.

    Called once per configured target when a :class:`~cellvault.Vault` is
    built. Look at ``spec.scheme`` (``s3``, ``oss``, ``""`` for a plain path)
    and ``spec.options``; the first plugin that returns a target wins, and
    plugins registered later are asked first, so a third-party plugin can
    take over a scheme from a built-in. Raise
    :class:`~cellvault.errors.ConfigError` for a spec you own but cannot use.
    """


@hookspec
def cellvault_before_backup(cell: Cell, archive: str) -> None:
    """Called before *cell* is read for the archive with id *archive*.

    For example to pause writers or flush caches. Raising fails this cell's
    backup (the run goes on with the other cells) and the message is reported.
    """


@hookspec
def cellvault_after_backup(report: CellReport) -> None:
    """Called after a cell's backup ends, successful or not, with its report.

    An exception raised here is logged and never changes the run's result.
    """


@hookspec
def cellvault_backup_failed(failure: Failure) -> None:
    """Called for every failure of a run: which stage, cell, target, and why.

    Notifiers (webhooks, alert logs) implement this. Each implementation is
    called on its own: an exception raised in one is logged, the others are
    still called, and the run's result does not change.
    """


@hookspec
def cellvault_restore_cell(cell: Cell, meta: ArchiveMeta, staging: Path) -> None:
    """Called when a cell's archive is extracted and verified, before the swap.

    *staging* holds the restored tree (``staging/<root name>`` for each of the
    cell's paths). Load database dumps, rewrite configuration, or check the
    data here. Raising aborts this restore before anything live is touched.
    """


@hookspec
def cellvault_after_restore(report: RestoreReport) -> None:
    """Called after a restore ends, with its report (restart services, health checks).

    An exception raised here is logged and never changes the restore's result.
    """
