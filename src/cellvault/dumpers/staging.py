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

    def state(self) -> dict[str, Any]:
        """What a journal records of this staged load (for reports after a crash)."""
        return {"dumper": self.dumper, "what": self.what, "side": self.side}
