"""The façade a platform service or the command line holds: a :class:`Vault`.

A vault is cells + targets + policies. Its methods run whole operations and
return reports; they never print, never exit and never configure logging.
Each operation opens one :class:`~cellvault.run.Run` and hands it to the
operation's module under :mod:`cellvault.ops`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import pluggy

from .archive import Kind, Selector, utcnow
from .cell import Cell
from .codec import Codec, get_codec
from .config import Config, load_env, load_toml
from .crypt import Keyring, Recipients, load_recipients, using
from .dumpers.base import Dumper
from .errors import ConfigError
from .events import Event
from .fence import Fence, fence_for, write_heartbeat
from .hooks import ScriptHooks
from .immutability import ObjectLock, lock_mode
from .layout import BackupDirLayout
from .notify import alert_settings
from .ops import backup as backup_op
from .ops import browse, listing
from .ops import mount as mount_op
from .ops import partial as partial_op
from .ops import prune as prune_op
from .ops import rekey as rekey_op
from .ops import restore as restore_op
from .ops import verify as verify_op
from .ops.backup import iter_failures
from .ops.browse import DiffReport, Found, Point, TreeEntry
from .ops.listing import ArchiveInfo
from .ops.partial import PathRestoreReport
from .ops.resources import Resources, find_target
from .plugins import make_plugin_manager
from .report import BackupReport, RestoreReport, VerifyReport
from .retention import PruneReport
from .run import Run, open_run
from .signing import SigningKeys
from .state import StateFile
from .status import StatusReport
from .targets.base import Target

__all__ = ["ArchiveInfo", "Level", "Names", "Vault", "iter_failures", "names"]

#: A verify level, cheapest first (:data:`cellvault.integrity.LEVELS`).
Level = Literal["quick", "read", "full", "drill"]

#: Cells, targets or dumpers named at a call: one name, any iterable of names,
#: or ``None`` for all of them. One string is one name, never its characters.
Names = str | Iterable[str] | None


_T = TypeVar("_T")


def names(value: Names, what: str = "cells") -> tuple[str, ...] | None:
    """*value* as a tuple of names (``None`` stays ``None``: all of them).

    A single string is one name (``cells="crm"`` is ``("crm",)``); anything
    that is not a string or an iterable of strings is a :class:`TypeError`
    at the call, before anything runs.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, Iterable):
        raise TypeError(
            f"{what} must be a name or an iterable of names, not {type(value).__name__}"
        )
    out = tuple(value)
    for item in out:
        if not isinstance(item, str):
            raise TypeError(f"{what} must be names (str), not {type(item).__name__}: {item!r}")
    return out


class Vault:
    """Back up, verify, list and restore the cells of a :class:`Config`.

    *plugins* are registered after the built-ins and entry points (pass
    ``load_entry_points=False`` to load none, as tests do). *on_event* is
    called with an :class:`Event` for every step; it may be called from worker
    threads. *clock* gives the current UTC time (tests pass a fake one).
    """

    def __init__(
        self,
        config: Config,
        *,
        plugins: Iterable[object] = (),
        load_entry_points: bool = True,
        on_event: Callable[[Event], None] | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.config = config
        self.plugins: pluggy.PluginManager = make_plugin_manager(
            plugins, load_entry_points=load_entry_points
        )
        self.on_event = on_event
        self.clock = clock
        self.host = socket.gethostname()
        self.codec: Codec = get_codec(config.codec, config.level)
        #: The site's signing key and the public keys archives are checked against.
        self.signing_keys: SigningKeys = SigningKeys.load(
            signing_key=config.signing_key,
            verify_keys=config.verify_keys,
            require=config.require_signed,
        )
        self.targets: list[Target] = [self._make_target(spec) for spec in config.target_specs]
        #: DR fencing: who may write to the shared targets (:mod:`cellvault.fence`). A
        #: plugin that writes to a shared target calls ``vault.fence.check("what")`` first.
        self.fence: Fence = fence_for(config, self.targets)
        if config.hooks_dir is not None or config.restore_hooks_dir is not None:
            # The seed's restore_hook_<cell>.sh and siblings: a plugin bound to this config.
            self.plugins.register(
                ScriptHooks(config.hooks_dir, config.restore_hooks_dir, config.hook_timeout),
                name="cellvault.hooks",
            )
        #: Each configured cell's dumpers, built (and so checked) once, by the dumper plugins.
        self.dumpers: dict[str, tuple[Dumper, ...]] = {
            cell.name: self._make_dumpers(cell) for cell in config.cells
        }
        self._stamp_lock = threading.Lock()
        # Alert settings are read at every alert: a mistake must show now, not then.
        alert_settings(config)
        #: What status and metrics remember between runs.
        self.state = StateFile(config.backup_dir)
        #: Encryption at rest (:mod:`cellvault.crypt`): the recipients new archives are
        #: sealed to (``None``: not encrypted), and the identities that read them,
        #: loaded the first time a sealed archive is read.
        self.recipients: Recipients | None = (
            load_recipients(config.encrypt_recipients, config.encrypt_recipients_file)
            if config.encrypt_recipients or config.encrypt_recipients_file
            else None
        )
        self.keyring = Keyring(
            files=(config.age_identity,) if config.age_identity else (),
            fetch=self._fetch_identities,
        )

    def _fetch_identities(self) -> list[str]:
        found = self.plugins.hook.cellvault_age_identities(config=self.config)
        return [text for batch in found if batch for text in batch]

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Vault:
        """A vault from a TOML configuration file."""
        return cls(load_toml(Path(path)), **kwargs)

    @classmethod
    def from_env(
        cls,
        environ: dict[str, str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> Vault:
        """A vault from the seed's environment variables (and its ``backup_config.env``)."""
        return cls(load_env(environ, Path(env_file) if env_file else None), **kwargs)

    def _make_target(self, spec: Any) -> Target:
        target = self.plugins.hook.cellvault_make_target(spec=spec)
        if target is None:
            raise ConfigError(
                f"target {spec.name}: no target type handles {spec.display()}",
                hint="install the plugin or fsspec backend for this URL scheme",
            )
        target.signing_keys = self.signing_keys
        mode = lock_mode(self.config.object_lock)
        if mode is not None:
            target.object_lock = ObjectLock(mode, self.config.retention_for(spec.name))
        return target  # type: ignore[no-any-return]

    def _make_dumpers(self, cell: Cell) -> tuple[Dumper, ...]:
        out: list[Dumper] = []
        for item in cell.dumpers:
            if isinstance(item, Dumper):
                out.append(item)
                continue
            dumper = self.plugins.hook.cellvault_make_dumper(spec=item)
            if dumper is None:
                raise ConfigError(
                    f"cell {cell.name}: no dumper type handles dumper {item.display()}",
                    hint="built-in types: command, mysql, postgres, redis, sqlite; "
                    "or install the plugin that provides it",
                )
            out.append(dumper)
        return tuple(out)

    # -- helpers ---------------------------------------------------------

    @property
    def spool(self) -> Path:
        """Where archives are built and DR copies transferred (``<backup_dir>/.cellvault/spool``)."""
        return BackupDirLayout(self.config.backup_dir).spool

    def target(self, name: str) -> Target:
        """The configured target called *name*."""
        return find_target(self.targets, name)

    def _resources(self) -> Resources:
        """What an operation works with, as this vault holds it now."""
        return Resources(
            targets=list(self.targets),
            dumpers=self.dumpers,
            codec=self.codec,
            state=self.state,
            clock=self.clock,
            stamp_lock=self._stamp_lock,
            fence=self.fence,
            recipients=self.recipients,
        )

    @contextlib.contextmanager
    def _open(self, operation: str) -> Iterator[Run]:
        """Open a run of *operation* (its id, run log and events) for this vault."""
        with (
            using(self.keyring),
            open_run(
                operation,
                config=self.config,
                plugins=self.plugins,
                host=self.host,
                on_event=self.on_event,
            ) as run,
        ):
            yield run

    def _keyed(self, items: Iterator[_T]) -> Iterator[_T]:
        """*items*, each produced with this vault's keyring current (lazy browsing)."""
        while True:
            with using(self.keyring):
                try:
                    item = next(items)
                except StopIteration:
                    return
            yield item

    def write_metrics(self, path: str | os.PathLike[str] | None = None) -> Path | None:
        """Rewrite the Prometheus textfile (*path*, else ``metrics_file``) from the state file.

        Returns the path written, or ``None`` when none is configured or it
        could not be written (logged: metrics never fail a run).
        """
        return listing.write_metrics(self.config, self.state, path)

    def status(
        self,
        cells: Names = None,
        *,
        targets: Names = None,
        max_age: float | None = None,
    ) -> StatusReport:
        """Whether every cell has a fresh, verified backup on every target.

        For each cell and target: the newest committed archive and its age
        (the RPO), and the last verify, quick, full and drill results
        remembered from earlier runs. A cell is not ok on a target when its
        newest archive is older than *max_age* hours (default: the config's
        ``max_age``, 26), when there is none, or when its last verify failed.
        Lists the targets; reads no archive.
        """
        return listing.status(
            self.config, self._resources(), names(cells), names(targets, "targets"), max_age
        )

    # -- operations ------------------------------------------------------

    def backup(
        self,
        cells: Names = None,
        *,
        kind: Kind | None = None,
        targets: Names = None,
        reason: str = "scheduled",
    ) -> BackupReport:
        """Back up *cells* (all by default) to *targets* (all by default).

        *kind* is ``full`` or ``incremental`` (default: the config's
        ``backup_type``). Each cell's archive is built once, stored to every
        target at once, and read back and checked on each (unless
        ``verify_after_backup`` is off). All archives of one run share one
        stamp. Failures are in the report (and sent to the
        ``cellvault_backup_failed`` hook); nothing committed is ever partial.
        Each run writes ``<backup_dir>/logs/backup_<stamp>.log`` and is
        remembered per cell and target for :meth:`status` and the metrics.
        A scheduled backup of a DR site (``DR_SITE_ID`` or ``DR_TARGET`` set,
        or a :class:`~cellvault.dr.Site`'s vault) also writes the site's heartbeat to
        the shared targets (what ``cellvault dr watch`` on the standby reads).
        """
        with self._open("backup") as run:
            report = backup_op.backup(
                run,
                self._resources(),
                names(cells),
                kind=kind,
                targets=names(targets, "targets"),
                reason=reason,
            )
            run.finish(report, metrics=self.write_metrics)
        if reason == "scheduled" and self.fence.dr and self.fence.storage:
            # The run's own stamp (the vault's clock at its start) and its duration.
            at = dt.datetime.strptime(report.stamp, "%Y%m%d_%H%M%S").replace(tzinfo=dt.UTC)
            at += dt.timedelta(seconds=report.duration)
            write_heartbeat(self.fence, now=at, source="backup", host=self.host)
        return report

    def verify(
        self,
        cells: Names = None,
        *,
        targets: Names = None,
        select: str | Selector = "latest",
        all_archives: bool = False,
        level: Level = "full",
    ) -> VerifyReport:
        """Check archives on each target, at one of four levels.

        By default the latest archive of each cell on each target; with
        *all_archives*, every committed one (not for drills).

        * ``quick`` reads no data: the sidecar is there, the stored object has
          the recorded size and, where the store reports one on HEAD (OSS's
          CRC-64, an S3 single-part ETag), the recorded checksum; the manifest
          copy and an incremental's chain are committed there.
        * ``read`` reads each archive once without unpacking it: the sha256
          against the sidecar, the data decompressed to its end (the codec's
          checksum of every byte), ``meta.json`` with ``backed_at``, the tar's
          end blocks, the manifest copy and the chain
          (:func:`cellvault.ops.verify.read_check`); the check after each backup
          by default.
        * ``full`` reads each archive back: the sha256 against the sidecar,
          every member against the manifest, ``backed_at`` in ``meta.json``,
          and that an incremental's chain is committed there.
        * ``drill`` restores the archive (and its chain) from each target into
          a scratch directory under the backup directory, compares the tree
          with the manifest, runs the ``cellvault_health_check`` hooks, and
          reports the time it took (``rto``); the scratch copy is removed.

        Each result is remembered per cell and target for :meth:`status`;
        failures go to the ``cellvault_backup_failed`` hook (operation
        ``verify``).
        """
        with self._open("verify") as run:
            report = verify_op.verify(
                run,
                self._resources(),
                names(cells),
                targets=names(targets, "targets"),
                select=select,
                all_archives=all_archives,
                level=level,
            )
            run.finish(report, metrics=self.write_metrics)
        return report

    def rekey(
        self,
        cells: Names = None,
        *,
        targets: Names = None,
        select: str | Selector = "latest",
        all_archives: bool = False,
    ) -> rekey_op.RekeyReport:
        """Re-encrypt stored archives to the current recipients, without decompressing them.

        The archives *select* picks (the newest, or every match with
        *all_archives*) of *cells* on *targets* are decrypted with this
        vault's identities and sealed again to ``BACKUP_ENCRYPT_RECIPIENTS``
        as one stream each; an archive stored in the clear is sealed. Each is
        committed like a backup (a new object, then its manifest copy, then
        the sidecar); the old object is deleted after. See ``docs/encryption.md``.
        """
        with self._open("rekey") as run:
            report = rekey_op.rekey(
                run,
                self._resources(),
                names(cells),
                targets=names(targets, "targets"),
                select=select,
                all_archives=all_archives,
            )
            run.finish(report)
        return report

    def list(self, cells: Names = None, *, targets: Names = None) -> list[ArchiveInfo]:
        """The committed archives, oldest first, each with the targets that hold it."""
        return listing.list_archives(
            self.config, self._resources(), names(cells), names(targets, "targets")
        )

    def prune(
        self,
        cells: Names = None,
        *,
        targets: Names = None,
        dry_run: bool = False,
    ) -> PruneReport:
        """Delete the archives each target's retention policy no longer keeps.

        Per target and cell, under the cell's lease: archives go newest first,
        each sidecar before its data, and an archive a kept archive needs is
        never deleted, nor a cell's newest (full) archive. Debris of
        interrupted runs goes too. With *dry_run*, every decision and its
        reasons are returned and nothing is touched. A target that cannot be
        pruned is reported (and alerted) without stopping the others.
        """
        with self._open("prune") as run:
            return prune_op.prune(
                run,
                self._resources(),
                names(cells),
                targets=names(targets, "targets"),
                dry_run=dry_run,
            )

    def restore(
        self,
        select: str | Selector = "latest",
        *,
        cells: Names = None,
        into: str | os.PathLike[str] | None = None,
        skip_prebackup: bool = False,
        source: Names = None,
        allow_external_links: bool = False,
        load_dumps: bool | str | Iterable[str] | None = None,
        dump_options: Mapping[str, Mapping[str, Any]] | None = None,
        keep_excluded: bool = True,
    ) -> RestoreReport:
        """Restore cells to the archive *select* picks (``latest``, an id, a date prefix, a time).

        Into the cells' own paths (after a safety backup of the current data,
        unless *skip_prebackup*) or, with *into*, under ``<into>/<cell>/``.
        Every archive is planned first: an unknown cell, a malformed date, a
        missing archive or a broken chain raises before anything is touched.
        Each cell is extracted into a staging directory beside its
        destination, checked file by file against the manifest, handed to the
        restore hooks, and only then swapped into place. If any step fails,
        the live data is left as it was. *source* orders the targets to read
        from (default: configured order, so local first).

        Dumps (``docs/dumpers.md``) are extracted and checked with the files.
        Once every cell is staged, each cell's dumps are loaded, then its
        restore hooks run (``cellvault_restore_cell``, ``restore_hook_<cell>.sh``),
        one cell after the other, all before any swap: a load or hook that
        fails leaves every cell's files as they were. *load_dumps*: ``None``
        loads the dumps of the dumpers with ``autoload`` when restoring in
        place, none with *into* (their files are kept in ``<into>/<cell>.dumps/``);
        ``False`` loads none, ``True`` the autoload ones even with *into*, a
        list of dumper names exactly those. *dump_options* (dumper name ->
        options) changes a dumper's options for this restore, e.g.
        ``{"pg": {"tables": ["public.orders"]}}``. After the swap, the
        ``cellvault_health_check`` hooks (``health_check_<cell>.sh``) run.

        A restore is all or nothing per cell: when the swap of one root fails,
        every root already swapped is put back. The report says per cell and
        per part (``files:<root>``, ``dump:<dumper>``, ``safety backup``) what
        was staged, loaded, swapped or rolled back, and gives the command that
        undoes the restore. A journal beside the staging directory lets the
        next backup or restore of a cell settle a restore that was killed
        (``docs/concepts.md``). The archives read are held by a read lease that
        ``prune`` respects. In place, live paths the cell's ``exclude`` rules
        leave out of backups are kept (*keep_excluded*); ``False`` removes them.

        Symbolic links are restored as they were, wherever they point
        (absolute, dangling, outside the cell): extraction never writes
        through a link. *allow_external_links* is accepted for compatibility
        and does nothing.
        """
        with self._open("restore") as run:
            report = restore_op.restore(
                run,
                self._resources(),
                select,
                cells=names(cells),
                into=into,
                skip_prebackup=skip_prebackup,
                source=names(source, "source"),
                allow_external_links=allow_external_links,
                load_dumps=load_dumps
                if isinstance(load_dumps, bool | None)
                else names(load_dumps, "load_dumps"),
                dump_options=dump_options,
                keep_excluded=keep_excluded,
            )
            run.finish(report)
        return report

    # -- browsing the history (manifests only) ----------------------------

    def ls(
        self,
        cell: str,
        *,
        select: str | Selector = "latest",
        path: str | None = None,
        source: Names = None,
    ) -> tuple[Point, Iterator[TreeEntry]]:
        """The tree of *cell* at the point *select* picks, read from its manifest alone.

        *select* is chosen as :meth:`restore` chooses (``latest``, an id, a
        date prefix, an ISO time). Returns the point (archive, time, target)
        and an iterator of its entries: cell-relative path (``<root>/...``),
        type, size, mode, mtime, owner, link target and, for files, the
        archive holding the bytes and their sha256. With *path*, only that
        path and what lies under it (:class:`~cellvault.ArchiveNotFound`
        when the point does not hold it). No archive data is read.
        """
        with using(self.keyring):
            point, entries = browse.list_tree(
                self.config, self._resources(), cell, select, path, names(source, "source")
            )
        return point, self._keyed(entries)

    def find(
        self,
        cell: str,
        patterns: str | Iterable[str],
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        source: Names = None,
    ) -> Iterator[Found]:
        """Every point of *cell* at which a path matching one of *patterns* existed, newest first.

        A pattern with a ``/`` is a glob over the cell-relative path
        (``crm/config/*.yml``); one without matches the last component
        (``*.yml``). Yields one :class:`~cellvault.ops.browse.Found` per
        point and path (its size, mtime and sha256 there), reading each
        archive's manifest copy once, one at a time; *since* and *until*
        (UTC) bound the points. No archive data is read.
        """
        wanted = [patterns] if isinstance(patterns, str) else list(patterns)
        found = browse.find(
            self.config,
            self._resources(),
            cell,
            wanted,
            since=since,
            until=until,
            source=names(source, "source"),
        )
        return self._keyed(found)

    def diff(
        self,
        cell: str,
        a: str | Selector,
        b: str | Selector = "latest",
        *,
        source: Names = None,
    ) -> DiffReport:
        """What changed in *cell* from point *a* to point *b*, from their manifests alone.

        Paths added, removed and modified (what changed: ``type``,
        ``content``, ``mode``, ``owner``, link ``target``, ``mtime``; a
        directory's mtime is not compared), sorted by path, with counts and
        byte totals (:meth:`~cellvault.ops.browse.DiffReport.totals`).
        """
        with using(self.keyring):
            return browse.diff(self.config, self._resources(), cell, a, b, names(source, "source"))

    def restore_paths(
        self,
        cell: str,
        paths: str | Iterable[str],
        select: str | Selector = "latest",
        *,
        into: str | os.PathLike[str] | None = None,
        source: Names = None,
        allow_external_links: bool = False,
    ) -> PathRestoreReport:
        """Restore only the paths of *cell* matching *paths* (globs), from the point *select* picks.

        Patterns as in :meth:`find`; a live absolute path under one of the
        cell's roots works too. Each topmost match is restored with
        everything under it (a directory replaces the live directory as a
        whole). Only the chain archives that hold selected files are
        opened, each read up to the last member wanted. Everything is staged
        and checked against the manifest beside the cell's root, then each
        path is swapped into place; a failure puts back what was swapped.
        What was replaced is kept beside the root
        (``.cellvault-replaced-<cell>-<run>``, in the report); the rest of
        the live tree is not touched. With *into*, paths land under
        ``<into>/<cell>/<root>/...`` instead. No dumps are loaded and no
        restore hooks run.
        """
        wanted = [paths] if isinstance(paths, str) else list(paths)
        with self._open("restore") as run:
            report = partial_op.restore_paths(
                run,
                self._resources(),
                cell,
                wanted,
                select,
                into=into,
                source=names(source, "source"),
                allow_external_links=allow_external_links,
            )
            run.finish(report)
        return report

    def mount(
        self,
        cell: str,
        mountpoint: str | os.PathLike[str],
        *,
        select: str | Selector | None = "latest",
        source: Names = None,
        cache_bytes: int = mount_op.DEFAULT_CACHE_BYTES,
    ) -> None:
        """Serve a read-only FUSE view of *cell* at *mountpoint* until it is unmounted.

        The point *select* picks (as :meth:`restore` picks it) appears as the
        cell's tree (``<mountpoint>/<root>/...``); with *select* ``None``,
        every point appears as a directory named by its archive id. The
        tree comes from manifests; a file's bytes are fetched on first read
        (its archive streamed only up to that member, checked against the
        manifest's sha256) into a cache of at most *cache_bytes* under the
        spool folder, removed when the view is unmounted. Needs the
        ``mount`` extra (``mfusepy``) and FUSE (``/dev/fuse``, libfuse);
        :class:`~cellvault.ConfigError` says which is missing. Blocks in the
        foreground: unmount with ``fusermount -u MOUNTPOINT`` (or Ctrl-C).
        """
        mount_op.load_fuse()
        with self._open("mount") as run:
            view = mount_op.open_view(
                self.config,
                self._resources(),
                cell,
                self.spool / f"mount-{run.id}",
                select=select,
                source=names(source, "source"),
                cache_bytes=cache_bytes,
            )
            mount_op.mount(view, Path(mountpoint))
