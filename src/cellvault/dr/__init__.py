"""Disaster recovery: push archives to object storage, pull them on a standby site, fail over and back.

The seed's section 5: the primary site pushes its backups to object storage
(``sync_backup_to_dr.sh``), a standby site pulls them every few minutes
(``DR_PULL_ONLY=1``) and, when the primary is lost, restores them, writes a
failover marker and switches traffic (``dr_failover.sh`` with ``DR_SITE_ID``).
A :class:`Site` is one side of that pair: a :class:`~cellvault.Vault` whose
first target is the site's own backup directory and whose other targets (or
``DR_TARGET``) are the shared object storage.

What lives where on the object storage, beside the cells' folders::

    <root>/.dr/failover.json            the failover marker, while a failover is in effect
    <root>/.dr/history/<stamp>_*.json   markers of finished failovers and failbacks
    <root>/.dr/sites/<site>.json        what each site held at its last sync
    <root>/.dr/epochs/<N>.json          the DR epochs (cellvault.fence): who may write
    <root>/.dr/heartbeats/<site>.json   each site's last sign of life (dr watch reads it)

and on each site, ``<backup_dir>/.cellvault/dr/failover.json`` (the marker as
this site last wrote or saw it) and ``<backup_dir>/.cellvault/spool/sync/``
(archives being pulled from a store that cannot be written to as a stream).

The package, one concept per module:

* :mod:`~cellvault.dr.settings`: the ``DR_*`` variables (:class:`DrSettings`);
* :mod:`~cellvault.dr.records`: what is persisted (the failover marker, site records);
* :mod:`~cellvault.dr.reports`: what the steps return;
* :mod:`~cellvault.dr.sync`: the copy engine (:func:`copy_cell`);
* :mod:`~cellvault.dr.holdings`, :mod:`~cellvault.dr.markers`: what a target
  holds; where markers and site records are kept;
* :mod:`~cellvault.dr.context`: what every step of one site works with;
* :mod:`~cellvault.dr.replicate`, :mod:`~cellvault.dr.prepare`,
  :mod:`~cellvault.dr.failover`, :mod:`~cellvault.dr.failback`,
  :mod:`~cellvault.dr.status`, :mod:`~cellvault.dr.watch`: the steps, as functions of a
  :class:`~cellvault.dr.context.SiteContext`;
* :mod:`~cellvault.dr.steps`: the manual steps' texts;
* :mod:`~cellvault.dr.site`: :class:`Site`, the façade.
"""

from __future__ import annotations

from ..errors import DrError
from .records import (
    DR_FORMAT,
    HISTORY_FOLDER,
    MARKER_KEY,
    SITES_FOLDER,
    FailoverMarker,
    Handback,
    Holding,
    SiteRecord,
)
from .reports import (
    CellLag,
    CellSync,
    FailbackReport,
    FailoverReport,
    HookOutcome,
    PrepareReport,
    StatusReport,
    SyncReport,
    TargetCheck,
    TargetView,
)
from .settings import DrSettings
from .site import Site
from .steps import failover_steps, handback_steps, takeover_steps
from .sync import COPY_ATTEMPTS, copy_cell
from .watch import Probe, WatchDecision, Watcher, WatchSettings

__all__ = [
    "COPY_ATTEMPTS",
    "DR_FORMAT",
    "HISTORY_FOLDER",
    "MARKER_KEY",
    "SITES_FOLDER",
    "CellLag",
    "CellSync",
    "DrError",
    "DrSettings",
    "FailbackReport",
    "FailoverMarker",
    "FailoverReport",
    "Handback",
    "Holding",
    "HookOutcome",
    "PrepareReport",
    "Probe",
    "Site",
    "SiteRecord",
    "StatusReport",
    "SyncReport",
    "TargetCheck",
    "TargetView",
    "WatchDecision",
    "WatchSettings",
    "Watcher",
    "copy_cell",
    "failover_steps",
    "handback_steps",
    "takeover_steps",
]
