"""Script hooks: the operations manual's ``restore_hook_<cell>.sh``, and its siblings.

Operators who know the seed keep one shell script per cell and purpose in a
folder; cellvault runs the ones that exist, with a timeout, never through a
shell of its own (a script without the executable bit is run with
``/bin/sh``):

============================  ====================================================
script                        runs
============================  ====================================================
``before_backup_<cell>.sh``   before the cell is read (pause writers, flush caches)
``after_backup_<cell>.sh``    as soon as the cell has been read, also after a
                              failure (resume writers), before the upload
``restore_hook_<cell>.sh``    after the cell's archive is extracted, checked and
                              its dumps loaded, **before** the swap
``health_check_<cell>.sh``    after a restore's swap, and in restore drills
============================  ====================================================

Backup scripts are looked up in ``hooks_dir`` (``BACKUP_HOOKS_DIR``); restore
and health-check scripts in ``restore_hooks_dir`` (``RESTORE_HOOKS_DIR``),
else ``hooks_dir``. Each gets the variables listed in ``docs/dumpers.md``
(``CELLVAULT_CELL``, ``CELLVAULT_ARCHIVE``, ``CELLVAULT_STAGING``,
``CELLVAULT_DUMPS``, ``RESTORE_DATE``, ...). A script that exits non-zero
or outlives the timeout fails the step: the cell's backup, or its restore
before anything live is touched.

:class:`ScriptHooks` is an ordinary plugin object; the vault registers one,
bound to its configuration, through the same ``register`` call as any plugin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from .archive import ArchiveMeta
from .cell import Cell
from .errors import BackupError, RestoreError
from .hookspecs import hookimpl
from .log import get_logger
from .tool import run_tool

__all__ = ["DEFAULT_HOOK_TIMEOUT", "SCRIPTS", "ScriptHooks"]

log = get_logger(__name__)

#: Seconds a hook script may run before it (and what it started) is killed.
DEFAULT_HOOK_TIMEOUT = 600.0

#: Hook -> script name pattern (``{cell}`` is the cell name).
SCRIPTS: Mapping[str, str] = {
    "before_backup": "before_backup_{cell}.sh",
    "after_backup": "after_backup_{cell}.sh",
    "restore": "restore_hook_{cell}.sh",
    "health_check": "health_check_{cell}.sh",
}


def _stamp(archive: str) -> str:
    # cell_<cell>_<YYYYMMDD_HHMMSS>: the stamp is the last 15 characters.
    return archive[-15:]


# eq=False: a plugin is one object (hashed by identity, as pluggy needs), not a value.
@attrs.define(eq=False)
class ScriptHooks:
    """Runs the hook scripts of a folder as cellvault hooks (see the module docs)."""

    hooks_dir: Path | None = None
    restore_hooks_dir: Path | None = None
    timeout: float | None = DEFAULT_HOOK_TIMEOUT

    def script(self, hook: str, cell: str) -> Path | None:
        """The script for *hook* of *cell*, if there is one."""
        folder = self.hooks_dir if hook in ("before_backup", "after_backup") else None
        if hook in ("restore", "health_check"):
            folder = self.restore_hooks_dir or self.hooks_dir
        if folder is None:
            return None
        path = folder / SCRIPTS[hook].format(cell=cell)
        return path if path.is_file() else None

    def run(
        self,
        hook: str,
        cell: Cell,
        env: Mapping[str, str],
        *,
        args: tuple[str, ...] = (),
        error: type[BackupError] | type[RestoreError] = BackupError,
        hint: str | None = None,
    ) -> bool:
        """Run *cell*'s script for *hook*, if it exists; raise *error* if it fails.

        Returns whether a script ran.
        """
        script = self.script(hook, cell.name)
        if script is None:
            return False
        argv = [str(script), *args]
        if not os.access(script, os.X_OK):
            argv = ["/bin/sh", *argv]
        full = {
            **os.environ,
            "CELLVAULT_HOOK": hook,
            "CELLVAULT_CELL": cell.name,
            "CELLVAULT_PATHS": ":".join(str(p) for p in cell.paths),
            **env,
        }
        hlog = log.bind(cell=cell.name, hook=hook, script=str(script))
        hlog.info("hook.started")
        result = run_tool(
            argv,
            what=f"cell {cell.name}: hook {script}",
            error=error,
            env=full,
            timeout=self.timeout,
            hint=hint,
        )
        output = result.stdout.decode("utf-8", "replace").strip()
        hlog.info("hook.finished", output=output[-500:] or None, stderr=result.stderr or None)
        return True

    # -- the hooks -----------------------------------------------------------------

    @hookimpl
    def cellvault_before_backup(self, cell: Cell, archive: str) -> None:
        self.run(
            "before_backup",
            cell,
            {"CELLVAULT_ARCHIVE": archive},
            hint="fix the hook; the cell was not backed up",
        )

    @hookimpl
    def cellvault_after_snapshot(self, cell: Cell, archive: str, error: str | None) -> None:
        env = {"CELLVAULT_ARCHIVE": archive, "CELLVAULT_OK": "0" if error else "1"}
        if error:
            env["CELLVAULT_ERROR"] = error
        self.run("after_backup", cell, env)

    @hookimpl
    def cellvault_restore_cell(
        self, cell: Cell, meta: ArchiveMeta, staging: Path, dumps: Path
    ) -> None:
        archive = str(meta.id)
        self.run(
            "restore",
            cell,
            {
                "CELLVAULT_ARCHIVE": archive,
                "CELLVAULT_STAGING": str(staging),
                "CELLVAULT_DUMPS": str(dumps),
                "CELLVAULT_BACKED_AT": meta.to_dict()["backed_at"],
                "RESTORE_CELL": cell.name,
                "RESTORE_DATE": _stamp(archive),
            },
            # The seed's scripts took the staging directory and archive id as arguments.
            args=(str(staging), archive),
            error=RestoreError,
            hint="fix the hook and restore again; the live files were not touched",
        )

    @hookimpl
    def cellvault_health_check(self, cell: Cell, meta: ArchiveMeta, root: Path) -> None:
        archive = str(meta.id)
        self.run(
            "health_check",
            cell,
            {
                "CELLVAULT_ARCHIVE": archive,
                "CELLVAULT_ROOT": str(root),
                "RESTORE_CELL": cell.name,
                "RESTORE_DATE": _stamp(archive),
            },
            args=(str(root), archive),
            error=RestoreError,
            hint="the restored data is in place; check the service",
        )
