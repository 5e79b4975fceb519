"""What a restore settles before it touches anything: the dumps it loads, and the safety backup.

:func:`check_dump_choices` refuses a dumper name or option no restored cell
has; :func:`dump_choice` and :func:`loads_dumps` say which dumps a restore
loads into the database servers; :func:`safety_backup` backs up everything
live (files and every database the cell's dumpers reach) before a restore
replaces it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RestoreError
from ..report import CellReport
from ..run import Run, open_run
from .backup import backup
from .listing import write_metrics
from .plan import RestorePlan
from .resources import Resources

__all__ = ["check_dump_choices", "dump_choice", "loads_dumps", "safety_backup"]


def check_dump_choices(
    res: Resources,
    plans: Sequence[RestorePlan],
    load_dumps: bool | Sequence[str] | None,
    dump_options: Mapping[str, Mapping[str, Any]] | None,
) -> None:
    """Refuse, before anything is touched, a dumper name or option no restored cell has."""
    wanted = set(dump_options or {}) | (
        set(load_dumps) if not isinstance(load_dumps, bool | None) else set()
    )
    known = {d.name for p in plans for d in res.dumpers.get(p.cell.name, ())}
    if wanted - known:
        raise ConfigError(
            f"no cell being restored has a dumper named {sorted(wanted - known)[0]!r}",
            hint=f"their dumpers: {', '.join(sorted(known)) or 'none'}",
        )
    for plan in plans:  # a bad option must fail before anything is touched
        for dumper in res.dumpers.get(plan.cell.name, ()):
            dumper.with_options((dump_options or {}).get(dumper.name, {}))


def loads_dumps(res: Resources, plans: Sequence[RestorePlan], only: Sequence[str] | None) -> bool:
    """Whether the restore loads any dump into a database server (*only* as :func:`dump_choice`)."""
    for plan in plans:
        for dumper in res.dumpers.get(plan.cell.name, ()):
            if (dumper.name in only) if only is not None else dumper.autoload:
                return True
    return False


def dump_choice(load: bool | Sequence[str] | None, into: Path | None) -> Sequence[str] | None:
    """Which dumps a restore loads: ``None`` the autoload ones, else exactly those named."""
    if load is None:
        return None if into is None else ()
    if load is True:
        return None
    if load is False:
        return ()
    return list(load)


def safety_backup(run: Run, res: Resources, plans: Sequence[RestorePlan]) -> dict[str, CellReport]:
    """Back up the cells whose destinations hold data, to the first target; return their reports.

    A backup run of its own (its own id and run log, reason ``pre-restore``);
    :class:`RestoreError` when it fails, so nothing is restored over data
    that could not be saved.
    """
    # Whatever is live: files on disk, and every database a dumper of the cell reaches
    # (whether or not its file directory exists).
    present = [
        p.cell.name
        for p in plans
        if res.dumpers.get(p.cell.name)
        or any(d.exists() or d.is_symlink() for d in p.dests.values())
    ]
    if not present:
        return {}
    with open_run(
        "backup", config=run.config, plugins=run.plugins, host=run.host, on_event=run.on_event
    ) as inner:
        pre = backup(
            inner, res, present, kind="full", targets=[res.targets[0].name], reason="pre-restore"
        )
        inner.finish(pre, metrics=lambda: write_metrics(run.config, res.state))
    if not pre.ok:
        failed = pre.failures()[0]
        raise RestoreError(
            f"the safety backup of cell {failed.cell} failed, so nothing was restored: {failed.error}",
            hint="fix the backup directory or its permissions and retry, "
            "or (with approval) skip it with RESTORE_SKIP_PREBACKUP=1",
        )
    return {c.cell: c for c in pre.cells}
