"""What a restore did with each part of each cell, in words a report can print truthfully.

A cell's parts are its file roots (``files:<root>``), its dumps
(``dump:<dumper>``) and its safety backup. The restore records each step
as it happens (staged, loaded, swapped in, rolled back ...), so a report
never says more than was checked: "nothing was touched" appears only when
no dump was loaded and no root swapped.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..cell import Cell
from ..dumpers.base import Dumper
from ..dumpers.staging import StagedLoad
from ..journal import Recovery, recover
from ..log import get_logger
from ..run import Run
from .drill import sweep_drills
from .plan import RestorePlan

__all__ = ["CellParts", "recover_cells", "undo_command"]

log = get_logger(__name__)

STAGED = "staged (not yet live)"
DISCARDED = "staged, then discarded: the live files are untouched"
SWAPPED = "swapped in"
ROLLED_BACK = "swapped in, then rolled back: the live files are back"
DISCARDED_SIDE = "staged, then discarded: the live database is untouched"
STAGED_IN_FILES = "written into the staged files (swapped in with them)"
NOT_LOADED = "not loaded: the live database is untouched"
LOADED = "loaded into the live database before the swap (this dumper cannot stage: {why})"
REFUSED = (
    "not loaded: this dumper cannot stage ({why}) and the safety backup was skipped, "
    "so the restore was refused; the live database is untouched"
)
PART_LOADED = (
    "loaded into the live database before the swap (this dumper cannot stage: {why}), "
    "and the load failed: the live database may hold part of the archive"
)


def undo_command(cell: str, safety: str | None) -> str | None:
    """The command that puts back what a restore of *cell* replaced (its safety backup)."""
    return None if not safety else f"cellvault restore --cell {cell} --date {safety}"


@attrs.define
class CellParts:
    """The parts of one cell being restored, and what happened to each."""

    cell: str
    states: dict[str, str] = attrs.field(factory=dict)
    loaded: list[str] = attrs.field(factory=list)
    partly: str | None = None
    #: Dumper -> why it could not stage (its own words).
    why: dict[str, str] = attrs.field(factory=dict)

    @classmethod
    def of(
        cls,
        plan: RestorePlan,
        dumpers: Iterable[str],
        safety: str | None,
        skipped: bool,
        into: bool,
    ) -> CellParts:
        """The parts of *plan*'s cell before anything happened."""
        parts = cls(plan.cell.name)
        if not into:
            if safety:
                parts.states["safety backup"] = f"taken: {safety}"
            elif skipped:
                parts.states["safety backup"] = "skipped (RESTORE_SKIP_PREBACKUP=1)"
            else:
                parts.states["safety backup"] = "not needed: no live files and no dumpers"
        for root in plan.dests:
            parts.states[f"files:{root}"] = "not staged"
        for name in dumpers:
            parts.states[f"dump:{name}"] = NOT_LOADED
        return parts

    def files(self, state: str) -> None:
        """Set the state of every file root."""
        for key in self.states:
            if key.startswith("files:"):
                self.states[key] = state

    def loading(self, dumper: str) -> None:
        """A dumper that cannot stage starts loading into its live store."""
        self.partly = dumper
        self.states[f"dump:{dumper}"] = PART_LOADED.format(why=self._why(dumper))

    def refuse(self, dumper: str) -> str:
        """A dumper that cannot stage, with the safety backup skipped: say so; return the refusal.

        Called before its load starts, so its live store is untouched.
        """
        why = self._why(dumper)
        self.states[f"dump:{dumper}"] = REFUSED.format(why=why)
        return (
            f"refused: dumper {dumper} cannot stage ({why}), so its dump "
            "would be loaded into the live database before the swap and the restore cannot be "
            "atomic, and the safety backup was skipped (RESTORE_SKIP_PREBACKUP=1), so there "
            "would be no way back"
        )

    def done_loading(self, dumper: str) -> None:
        self.partly = None
        self.loaded.append(dumper)
        self.states[f"dump:{dumper}"] = LOADED.format(why=self._why(dumper))

    def _why(self, dumper: str) -> str:
        return self.why.get(dumper) or "it has no staging step"

    @property
    def touched(self) -> bool:
        """Whether a live database holds (part of) the archive now."""
        return bool(self.loaded) or self.partly is not None

    def live_dbs(self) -> str:
        names = [*self.loaded, *([self.partly] if self.partly else [])]
        return ", ".join(names)


def touched_text(parts: Mapping[str, CellParts], undo: Mapping[str, str | None]) -> str:
    """What an aborted restore left in the live databases, with the way back; '' when nothing."""
    touched = [p for p in parts.values() if p.touched]
    if not touched:
        return ""
    out = []
    for p in touched:
        way = undo.get(p.cell)
        back = (
            f"to go back: {way}" if way else "no safety backup was taken, so there is no way back"
        )
        out.append(
            f"cell {p.cell}: the live files are unchanged but the databases of dumpers "
            f"{p.live_dbs()} were already loaded from the archive ({back})"
        )
    return "; ".join(out)


def recover_cells(
    run: Run,
    plans: Iterable[RestorePlan | Cell],
    operation: str = "restore",
    dumpers: Mapping[str, Sequence[Dumper]] | None = None,
) -> tuple[Recovery, ...]:
    """Settle the interrupted restores of the cells (see :mod:`cellvault.journal`).

    What drills of the cells killed mid-way left is removed first
    (:func:`~cellvault.ops.drill.sweep_drills`).

    *dumpers* (cell name -> its dumpers) rebuild the staged databases a
    killed restore left, so that they are swapped in or put back with the
    files. Each recovery is emitted (``restore.recovered``) and logged; one
    that leaves a database partly loaded, or a side object unsettled, is a
    failure (alerted) naming the way back.
    """
    found: list[Recovery] = []
    for item in plans:
        cell, dests = (
            (item.cell, list(item.dests.values()))
            if isinstance(item, RestorePlan)
            else (item, list(item.roots.values()))
        )
        mine = {d.name: d for d in (dumpers or {}).get(cell.name, ())}
        drills = [
            Recovery(cell.name, "", "cleaned up", {}, note=text)
            for text in sweep_drills(run.layout, dumpers or {}, cell.name)
        ]
        for rec in [*drills, *recover(cell.name, dests, functools.partial(_resume, mine))]:
            run.emit("restore.recovered", cell=rec.cell, action=rec.action, detail=rec.describe())
            if not rec.settled:
                run.fail("recover", rec.describe(), cell=rec.cell, operation=operation)
            found.append(rec)
    return tuple(found)


def _resume(dumpers: Mapping[str, Dumper], state: Mapping[str, Any]) -> StagedLoad | None:
    """The staged load *state* describes, rebuilt by the cell's dumper of that name (if any)."""
    dumper = dumpers.get(str(state.get("dumper")))
    return None if dumper is None else dumper.resume(state)
