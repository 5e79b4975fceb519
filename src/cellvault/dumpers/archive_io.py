"""Running a cell's dumpers into an archive at backup time, and loading their dumps back.

The packer calls :func:`write_dumps` after the cell's files: each dumper
writes through a :class:`~cellvault.dumpers.DumpContext` into the archive's
``dumps/<name>/`` tree, which ends with its ``dumper.json`` (see
:mod:`cellvault.dumpers.members`). A restore stages that tree with the files,
and :func:`load_staged_dumps` hands each staged dump to its dumper through a
:class:`~cellvault.dumpers.LoadContext`, before the swap.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from ..archive import ArchiveMeta
from ..cell import Cell
from ..errors import CellvaultError, DumpError, LoadError
from ..log import get_logger, redact, redact_text
from ..manifest import ManifestWriter
from ..report import DumpSummary, iso
from ..specs import is_dumper_name
from .base import DumpContext, Dumper, LoadContext
from .members import DESCRIPTOR, DUMP_CHUNK, ArchiveDumps, TarSink
from .staging import StagedLoad

__all__ = [
    "load_staged_dumps",
    "read_descriptor",
    "staged_dumpers",
    "write_dumps",
]

log = get_logger(__name__)


def _iso(when: float) -> str:
    return iso(dt.datetime.fromtimestamp(when, dt.UTC))


# -- writing dumps into an archive ------------------------------------------------------


def write_dumps(
    tar: TarSink,
    manifest: ManifestWriter,
    dumpers: Sequence[Dumper],
    *,
    cell: Cell,
    archive: str,
    spool: Path,
    reason: str,
    chunk: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[DumpSummary]:
    """Run each dumper of *cell* into *tar* and *manifest*, in order (called by the packer).

    A failing dumper raises :class:`DumpError`, which fails the backup;
    except in a safety backup before a restore (``reason == "pre-restore"``),
    where the failure becomes a warning: the database may be what the
    restore is about to repair.
    """
    out = ArchiveDumps(tar, manifest, archive, chunk or DUMP_CHUNK, on_progress)
    return [
        _write_dump(out, dumper, cell=cell, spool=spool, reason=reason, warn=warn)
        for dumper in dumpers
    ]


def _write_dump(
    out: ArchiveDumps,
    dumper: Dumper,
    *,
    cell: Cell,
    spool: Path,
    reason: str,
    warn: Callable[[str], None] | None,
) -> DumpSummary:
    """Run one dumper and write its ``dumper.json``; what it did."""
    # The cells of a run share its spool folder: the scratch folder names both.
    scratch = spool / f".dump-{cell.name}-{dumper.name}"
    started = time.time()
    ctx = DumpContext(cell, out.archive, dumper, scratch, reason, out)
    dlog = log.bind(cell=cell.name, archive=out.archive, dumper=dumper.name, type=dumper.type)
    error: str | None = None
    try:
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        dumper.dump(ctx)
    except Exception as exc:
        error = _dump_failure(ctx, exc, dlog)
        # A failed dump fails the backup; in a safety backup, only a failed
        # write does (the tar stream is then unusable).
        if reason != "pre-restore" or out.broken:
            if isinstance(exc, DumpError) and str(exc) == error:
                raise  # it names the cell and the dumper already
            # Named once, the hint kept apart (a DumpError's own, or none).
            hint = exc.hint if isinstance(exc, CellvaultError) else None
            message = error.removesuffix(f" ({hint})") if hint else error
            raise DumpError(message, hint=hint) from None
        dlog.warning("dump.failed", error=error)
        if warn is not None:
            warn(f"dumper {dumper.name} failed, so the safety backup lacks its dump: {error}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    finished = time.time()
    out.add_descriptor(dumper.name, _descriptor(ctx, error, started, finished))
    size = sum(rec.size for rec in ctx.files.values())
    dlog.info("dump.written", bytes=size, ok=error is None, duration=round(finished - started, 3))
    return DumpSummary(dumper.name, dumper.type, error is None, size, finished - started, error)


def _dump_failure(ctx: DumpContext, exc: Exception, dlog: structlog.stdlib.BoundLogger) -> str:
    """The message of a failed dump, naming the cell and the dumper once."""
    if isinstance(exc, CellvaultError):
        # A known failure (a DumpError, a ConfigError such as an unset
        # password_env): its message says it all.
        return str(exc) if ctx.where in str(exc) else f"{ctx.where}: {exc}"
    dlog.exception("dump.crashed")
    return f"{ctx.where}: {type(exc).__name__}: {redact_text(str(exc))}"


def _descriptor(
    ctx: DumpContext, error: str | None, started: float, finished: float
) -> dict[str, Any]:
    """The body of a dump's ``dumper.json``."""
    dumper = ctx.dumper
    return {
        "format": 1,
        "name": dumper.name,
        "type": dumper.type,
        "ok": error is None,
        "error": error,
        "started_at": _iso(started),
        "finished_at": _iso(finished),
        "options": dumper.describe(),
        "info": redact(ctx.info),
        "files": {
            name: {"size": rec.size, "sha256": rec.sha256 or None, "parts": rec.parts}
            for name, rec in ctx.files.items()
        },
        "restore": dumper.stock_restore(list(ctx.files)),
    }


# -- loading dumps back -----------------------------------------------------------------


def read_descriptor(folder: Path, *, where: str, archive: str) -> dict[str, Any]:
    """The ``dumper.json`` of a staged dump, checked to describe a complete dump."""
    try:
        body = json.loads((folder / DESCRIPTOR).read_text())
    except FileNotFoundError:
        raise LoadError(
            f"{where}: archive {archive} holds no {DESCRIPTOR} for this dump",
            hint="the archive was made before this dumper was configured; restore without it",
        ) from None
    except ValueError as exc:
        raise LoadError(f"{where}: {DESCRIPTOR} is not JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("files"), dict):
        raise LoadError(f"{where}: {DESCRIPTOR} is unusable")
    if not body.get("ok", False):
        raise LoadError(
            f"{where}: archive {archive} holds an incomplete dump ({body.get('error')})",
            hint="choose an older archive, or restore with this dump skipped",
        )
    return body


def staged_dumpers(dumps: Path) -> list[str]:
    """The dumper names staged under *dumps* (``dumps/<name>/`` folders), sorted."""
    if not dumps.is_dir():
        return []
    return sorted(p.name for p in dumps.iterdir() if p.is_dir() and is_dumper_name(p.name))


def load_staged_dumps(
    *,
    cell: Cell,
    meta: ArchiveMeta,
    dumpers: Sequence[Dumper],
    dumps: Path,
    spool: Path,
    only: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    staged_roots: Mapping[Path, Path] | None = None,
    on_loading: Callable[[str], None] | None = None,
    on_loaded: Callable[[str], None] | None = None,
    sides: list[StagedLoad] | None = None,
    no_live: list[str] | None = None,
    on_staged: Callable[[StagedLoad], None] | None = None,
    on_read: Callable[[int], None] | None = None,
    on_start: Callable[[str], None] | None = None,
    on_side: Callable[[StagedLoad], None] | None = None,
    not_staged: dict[str, str] | None = None,
) -> list[str]:
    """Load the dumps staged in *dumps* with the cell's configured *dumpers*; return their names.

    By default (*only* ``None``) every dumper with ``autoload`` whose dump
    the archive holds is loaded, in the cell's order; a dump the archive
    lacks (made before the dumper was configured) is skipped with a warning.
    *only* names the dumpers to load, whatever their ``autoload``, and each
    must be in the archive. *options* (dumper name -> options) changes
    options for this restore only, such as ``tables`` or ``restore_dsn``.
    Raises :class:`LoadError` at the first failure. *on_loading* is called
    with a dumper's name before its load begins, *on_loaded* once it is done
    (a restore journals and reports them). With *sides* (a list), each
    dumper that can stage (:meth:`Dumper.stage`) loads into a side object
    instead, appended to *sides* for the caller to swap in; only a dumper
    that cannot stage loads into the live store (between *on_loading* and
    *on_loaded*). With *no_live* (a list, a drill's), a dumper that cannot
    stage is not loaded at all; its name is appended there. *on_read* is
    told the bytes each dumper reads; *on_start* each dumper's name before it
    starts; *on_side* each side object once named (:meth:`LoadContext.side_created`);
    *not_staged* (a dict) why each dumper that cannot stage cannot.
    """
    archive = str(meta.id)
    staged = set(staged_dumpers(dumps))
    options = dict(options or {})
    chosen = _chosen(cell, dumpers, only, options)
    llog = log.bind(cell=cell.name, archive=archive)
    loaded = []
    for dumper in chosen:
        if dumper.name not in staged:
            if only is not None:
                raise LoadError(
                    f"cell {cell.name}: archive {archive} holds no dump of dumper {dumper.name}",
                    hint=f"it holds: {', '.join(sorted(staged)) or 'no dumps'}",
                )
            llog.warning("dump.not_in_archive", dumper=dumper.name)
            continue
        folder = dumps / dumper.name
        ctx = _load_context(cell, meta, dumper, folder, spool, options, staged_roots or {})
        ctx.on_read, ctx.on_side = on_read, on_side
        if on_start is not None:
            on_start(ctx.dumper.name)
        if sides is not None:
            side = _load(ctx, llog, stage=True)
            if side is None and not_staged is not None:
                not_staged[ctx.dumper.name] = ctx.not_staged or "it has no staging step"
            if side is not None:
                sides.append(side)
                loaded.append(ctx.dumper.name)
                if on_staged is not None:
                    on_staged(side)
                continue
            if no_live is not None:
                no_live.append(ctx.dumper.name)
                continue
        if on_loading is not None:
            on_loading(ctx.dumper.name)
        _load(ctx, llog)
        loaded.append(ctx.dumper.name)
        if on_loaded is not None:
            on_loaded(ctx.dumper.name)
    return loaded


def _chosen(
    cell: Cell,
    dumpers: Sequence[Dumper],
    only: Sequence[str] | None,
    options: Mapping[str, Any],
) -> list[Dumper]:
    """The dumpers to load, in order; every name in *only* and *options* must be configured."""
    by_name = {d.name: d for d in dumpers}
    for name in [*(only or ()), *options]:
        if name not in by_name:
            raise LoadError(
                f"cell {cell.name}: no dumper named {name!r} is configured",
                hint=f"configured dumpers: {', '.join(by_name) or 'none'}",
            )
    if only is None:
        return [d for d in dumpers if d.autoload]
    return [by_name[name] for name in dict.fromkeys(only)]


def _load_context(
    cell: Cell,
    meta: ArchiveMeta,
    dumper: Dumper,
    folder: Path,
    spool: Path,
    options: Mapping[str, Mapping[str, Any]],
    staged_roots: Mapping[Path, Path],
) -> LoadContext:
    """The context of one staged dump, its descriptor checked against the dumper."""
    archive = str(meta.id)
    where = f"cell {cell.name}, dumper {dumper.name}"
    descriptor = read_descriptor(folder, where=where, archive=archive)
    if descriptor.get("type") != dumper.type:
        raise LoadError(
            f"{where}: archive {archive} holds a {descriptor.get('type')} dump, "
            f"but the dumper is of type {dumper.type}",
            hint="rename the dumper, or restore with this dump skipped",
        )
    if dumper.name in options:
        dumper = dumper.with_options(options[dumper.name])
    scratch = spool / f".load-{dumper.name}"
    return LoadContext(cell, archive, meta, dumper, folder, scratch, descriptor, staged_roots)


def _load(
    ctx: LoadContext, llog: structlog.stdlib.BoundLogger, *, stage: bool = False
) -> StagedLoad | None:
    """Load one staged dump in a scratch folder of its own; any failure is a LoadError.

    With *stage*, into a side object (``None``: the dumper cannot stage, nothing was done).
    """
    side: StagedLoad | None = None
    dumper, where = ctx.dumper, ctx.where
    started = time.monotonic()
    llog.info("dump.loading", dumper=dumper.name, type=dumper.type)
    try:
        ctx.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            if stage:
                side = dumper.stage(ctx)
                if side is None:
                    return None
            else:
                dumper.load(ctx)
        except LoadError:
            raise
        except CellvaultError as exc:
            raise LoadError(f"{where}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - re-raised as a LoadError naming the cause
            llog.exception("dump.load_crashed", dumper=dumper.name)
            raise LoadError(f"{where}: {type(exc).__name__}: {redact_text(str(exc))}") from None
    finally:
        shutil.rmtree(ctx.spool, ignore_errors=True)
    llog.info(
        "dump.staged" if side is not None else "dump.loaded",
        dumper=dumper.name,
        duration=round(time.monotonic() - started, 3),
    )
    return side
