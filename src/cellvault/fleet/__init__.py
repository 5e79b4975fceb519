"""The fleet: cells on many hosts, backed up and restored through Celery (``cellvault[fleet]``).

Every host runs ``cellvault fleet worker`` with its own configuration (its
cells); a coordinator (``cellvault fleet backup``, ``restore``, ``status``,
``hosts``; or :class:`Fleet` in a service) sends one task per cell to the
queue of the host that owns it, or, for a platform restore, to the standby
restore pool's queue. See ``docs/fleet.md``.

* :mod:`~cellvault.fleet.settings`: :class:`FleetSettings` (``[fleet]``, ``CELLVAULT_*``);
* :mod:`~cellvault.fleet.app`: the Celery app, its tasks and the worker;
* :mod:`~cellvault.fleet.coordinator`: :class:`Fleet`, the inventory;
* :mod:`~cellvault.fleet.reports`: what the commands return.
"""

from __future__ import annotations

from .app import WorkerContext, make_app, start_worker
from .coordinator import Fleet
from .inventory import inventory
from .reports import FleetReport, Inventory, TaskResult
from .settings import FleetSettings

__all__ = [
    "Fleet",
    "FleetReport",
    "FleetSettings",
    "Inventory",
    "TaskResult",
    "WorkerContext",
    "inventory",
    "make_app",
    "start_worker",
]
