"""The hooks a cellvault plugin can implement.

A plugin is a module or object with functions named like these specs and
marked with :data:`hookimpl`. Built-in target types register through the very
same hooks. Third-party packages declare an entry point in the ``cellvault``
group; see ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pluggy

from .archive import ArchiveMeta
from .cell import Cell
from .config import Config
from .report import CellReport, Failure, RestoreReport
from .specs import DumperSpec, TargetSpec

# For the signatures only: these modules implement or build on the hooks
# (dumpers and targets register their built-ins through them; dr is above all).
if TYPE_CHECKING:
    from .dr.records import FailoverMarker
    from .dumpers.base import Dumper
    from .targets.base import Target

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


@hookspec(firstresult=True)
def cellvault_make_dumper(spec: DumperSpec) -> Dumper | None:
    """Build the dumper for *spec*, or return ``None`` if its type is not yours.

    Called once per dumper of each configured cell when a
    :class:`~cellvault.Vault` is built. Look at ``spec.type`` (``postgres``,
    ``mysql``, ...), ``spec.name`` and ``spec.options``; the first plugin
    that returns a :class:`~cellvault.dumpers.Dumper` wins, and plugins
    registered later are asked first. Raise
    :class:`~cellvault.errors.ConfigError` for a spec you own but cannot use
    (``Dumper.from_spec`` does, for unknown or malformed options).
    """


@hookspec
def cellvault_before_backup(cell: Cell, archive: str) -> None:
    """Called before *cell* is read for the archive with id *archive*.

    For example to pause writers or flush caches. Raising fails this cell's
    backup (the run goes on with the other cells) and the message is reported.
    """


@hookspec
def cellvault_after_snapshot(cell: Cell, archive: str, error: str | None) -> None:
    """Called as soon as *cell* has been read (files and dumps), before the archive is stored.

    Called whenever ``cellvault_before_backup`` was, also when it or the
    reading failed (*error* then says why): resume here what
    ``cellvault_before_backup`` paused, so that writers wait for the read
    only, not for uploads. An exception raised here is logged and alerted;
    the archive, already complete, is stored anyway.
    """


@hookspec
def cellvault_after_backup(report: CellReport) -> None:
    """Called after a cell's backup ends, successful or not, with its report.

    An exception raised here is logged and never changes the run's result.
    """


@hookspec
def cellvault_backup_failed(failure: Failure, config: Config) -> None:
    """Called for every failure of a run: which stage, cell, target, and why.

    Notifiers (webhooks, alert logs) implement this; *config* is the vault's
    configuration (alert settings are in ``config.extra``), and an
    implementation may leave it out of its arguments. Each implementation is
    called on its own: an exception raised in one is logged, the others are
    still called, and the run's result does not change. Despite the name it
    is called for failures of every operation (``failure.operation``:
    backup, verify, restore, prune).
    """


@hookspec
def cellvault_run_finished(operation: str, report: object, config: Config) -> None:
    """Called when a run ends, with its report, successful or not.

    *operation* is ``backup``, ``verify`` or ``restore``; *report* is its
    :class:`~cellvault.BackupReport`, :class:`~cellvault.VerifyReport` or
    :class:`~cellvault.RestoreReport`. For success notices and summaries
    (failures have reached ``cellvault_backup_failed`` already). An exception
    raised here is logged and never changes the run's result.
    """


@hookspec
def cellvault_health_check(cell: Cell, meta: ArchiveMeta, root: Path) -> None:
    """Called by a restore drill once a cell's archive is restored into a scratch directory.

    *root* holds the restored tree (``root/<root name>`` for each of the
    cell's paths), checked against the manifest already. Check that the data
    is usable (open the database file, load a dump into a throwaway
    instance); raise to fail the drill, with a message saying what is wrong.
    Live data is never touched by a drill.

    A restore calls it too, for each cell, once every cell is swapped into
    place (and its dumps loaded): then ``root/<root name>`` are links to the
    cell's live paths (or, with ``into``, the restored directories). Raising
    marks that cell's restore failed (stage ``health``) and alerts; the
    restored data stays in place.
    """


@hookspec
def cellvault_restore_cell(cell: Cell, meta: ArchiveMeta, staging: Path, dumps: Path) -> None:
    """Called when a cell's archive is extracted and verified, before the swap.

    *staging* holds the restored tree (``staging/<root name>`` for each of the
    cell's paths); *dumps* holds the archive's dumps (``dumps/<dumper
    name>/...``, checked against the manifest; the folder may not exist when
    the archive has none). The dumpers configured to load automatically have
    loaded theirs already. Import one table by hand, rewrite configuration,
    or check the data here. Raising aborts this restore before anything live
    is touched (a database already loaded stays loaded: see
    ``docs/dumpers.md``).
    """


@hookspec
def cellvault_after_restore(report: RestoreReport) -> None:
    """Called after a restore ends, with its report (restart services, health checks).

    An exception raised here is logged and never changes the restore's result.
    """


@hookspec
def cellvault_failover(marker: FailoverMarker) -> None:
    """Called when a site becomes the active one: switch the traffic to it here.

    After ``cellvault dr failover`` on the standby (``marker.event ==
    "failover"``), once the marker is written; and after ``cellvault dr
    failback`` on the recovered primary (``marker.event == "failback"``),
    once the marker is cleared. ``marker.site_id`` is the site that serves
    from now on, ``marker.previous_site`` the one that served before. Point a
    DNS record, an SLB listener or a Kubernetes Ingress at the new site.
    Each implementation is called on its own: an exception is reported in
    the failover report (the command exits 1 and says to switch by hand), the
    others are still called, and the marker stands.
    """


@hookspec
def cellvault_switch_traffic(
    site: str, previous_site: str | None, event: str, config: Config
) -> str | None:
    """Called when *site* becomes the active one, to send the users' traffic to it.

    After a failover (*event* ``failover``, also one ``cellvault dr watch``
    started) once the marker is written, and after a failback's takeover
    (*event* ``failback``) once it is cleared; *previous_site* served before.
    Return what was switched, in a few words (``"DNS paas.example.com ->
    dr"``), or ``None`` when this implementation is not configured. Raise
    when the switch failed: the report says so, the command exits 1 and
    says to switch by hand, and the other implementations are still called.
    Built in: ``DR_SWITCH_COMMAND`` (:mod:`cellvault.traffic.command`) and
    ``DR_SWITCH_K8S`` (:mod:`cellvault.traffic.k8s`). An implementation may be
    called again for the same switch (a ``dr watch`` restarted mid-failover):
    make it idempotent.
    """


@hookspec
def cellvault_age_identities(config: Config) -> Sequence[str] | None:
    """Return age identities that read encrypted archives, from a secret store.

    Called once per vault, the first time an encrypted archive is read
    (restore, ``verify --level full`` or ``drill``, ``sync --verify``,
    browsing), never by a backup. Each item is the text of an identity file:
    ``AGE-SECRET-KEY-1...`` lines, or an unencrypted OpenSSH private key.
    Return ``None`` (or nothing) when this plugin has none. What is returned
    is never logged; see ``docs/encryption.md``.
    """
