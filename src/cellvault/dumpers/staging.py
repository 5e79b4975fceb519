"""Staged loads: a dump loaded into a side object first, swapped in with the cell's files.

A dumper that can stage implements :meth:`~cellvault.dumpers.Dumper.stage`:
it loads its dump into a side object (a scratch database, a file beside the
live one) and returns a :class:`StagedLoad`. The restore swaps every staged
load in only after every part of the cell (files, every dump, the restore
hooks) has succeeded, in one short step per store, keeping the old state
beside until the whole cell is in; any failure before or during the swap
puts every part back (:meth:`StagedLoad.unswap`, :meth:`StagedLoad.discard`).

The defaults make a :class:`StagedLoad` a no-op, which is right for a load
written into the staged files (they are swapped with the files). A dumper
whose :meth:`~cellvault.dumpers.Dumper.stage` returns ``None`` cannot stage:
its :meth:`~cellvault.dumpers.Dumper.load` runs against the live store before
the swap, and the restore then requires a safety backup and says it cannot
be atomic.

A restore killed mid-way leaves its journal, which records each staged
load's :meth:`StagedLoad.state`. The next run asks the dumper to rebuild the
staged load from that state (:meth:`~cellvault.dumpers.Dumper.resume`),
asks it whether its swap took effect (:meth:`StagedLoad.swapped`), and then
finishes the swap or puts the old state back, with the cell's files. A
dumper whose ``resume`` returns ``None`` (the default) leaves its side
object to a person: the recovery names it.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["StagedLoad"]


@attrs.define
class StagedLoad:
    """One dump loaded into a side object, not yet live.

    *what* names the live object in reports (``database crm on 127.0.0.1``);
    *side* the side object it was loaded into.
    """

    dumper: str
    what: str
    side: str = ""

    def swap(self) -> None:
        """Put the side object in place, keeping the old state beside (one short step)."""

    def unswap(self) -> None:
        """After :meth:`swap`: put the old state back (the new one goes aside again)."""

    def discard(self) -> None:
        """Before :meth:`swap`, or after :meth:`unswap`: drop the side object."""

    def commit(self) -> None:
        """After the whole cell is in: drop the old state (unless configured to keep it)."""

    def swapped(self) -> bool | None:
        """Whether :meth:`swap` has taken effect, as the store says (``None``: cannot tell).

        Asked only by the recovery of a killed restore, on a staged load
        rebuilt by :meth:`~cellvault.dumpers.Dumper.resume`: a swap killed
        before it was journalled is found done or not done here. The default,
        ``None``, makes the recovery put every part back rather than guess.
        """
        return None

    def state(self) -> dict[str, Any]:
        """What a journal records of this staged load: enough for ``Dumper.resume`` to rebuild it.

        Keep it JSON (strings, numbers, lists, dicts) and free of secrets.
        """
        return {"dumper": self.dumper, "what": self.what, "side": self.side}
