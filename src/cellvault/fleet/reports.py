"""What the fleet's commands return."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ..report import Report

__all__ = ["FleetReport", "Inventory", "TaskResult"]


@attrs.frozen
class TaskResult(Report):
    """One cell's task, as its worker reported it (or as the coordinator saw it fail)."""

    cell: str
    ok: bool
    #: The worker's host (``None``: no worker ran it).
    host: str | None = None
    worker: str | None = None
    archive: str | None = None
    #: Seconds the task ran on its worker.
    duration: float = 0.0
    #: The work was done already by an earlier delivery of the same task (a redelivery).
    already_done: bool = False
    error: str | None = None


@attrs.frozen
class FleetReport(Report):
    """A fleet backup or restore: every cell's result, and the wall time of the whole."""

    operation: str
    results: tuple[TaskResult, ...]
    #: Wall time from the first task sent to the last result: the platform's RTO for a restore.
    duration: float
    #: Cells no worker owns (not backed up), with the reason.
    unowned: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results) and not self.unowned

    @property
    def hosts(self) -> dict[str, int]:
        """Cells done per worker host."""
        out: dict[str, int] = {}
        for r in self.results:
            if r.host:
                out[r.host] = out.get(r.host, 0) + 1
        return out


@attrs.frozen
class Inventory(Report):
    """Which cells live on which host, and which workers serve the restore pool."""

    #: host -> its cells (from the configuration's ``[fleet.hosts]`` and the workers' own).
    hosts: Mapping[str, tuple[str, ...]]
    #: Hosts whose worker answered the announcement.
    live: tuple[str, ...] = ()
    #: Hosts whose workers read the standby restore pool's queue.
    pool: tuple[str, ...] = ()
    #: Cells configured on the coordinator that no host claims.
    unowned: tuple[str, ...] = ()
    #: Cells two or more hosts claim, with those hosts.
    contested: Mapping[str, tuple[str, ...]] = attrs.field(factory=dict)

    def owner(self, cell: str) -> str | None:
        """The one host that owns *cell* (``None``: none, or more than one)."""
        owners = [h for h, cells in self.hosts.items() if cell in cells]
        return owners[0] if len(owners) == 1 else None

    @property
    def cells(self) -> list[str]:
        return sorted({c for cells in self.hosts.values() for c in cells})

    def warnings(self) -> list[str]:
        out = [f"cell {c} is owned by no host: nobody backs it up" for c in self.unowned]
        out += [
            f"cell {c} is claimed by {len(hs)} hosts ({', '.join(hs)}): fix the configuration"
            for c, hs in self.contested.items()
        ]
        return out
