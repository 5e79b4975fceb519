"""The ``drill`` verify level: restore a cell into scratch space, check it, time it, remove it."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from ..archive import ArchiveId, Selector
from ..dumpers.archive_io import load_staged_dumps
from ..dumpers.base import Dumper
from ..dumpers.members import DUMPS_ROOT
from ..dumpers.staging import StagedLoad
from ..errors import CellvaultError
from ..extract import ArchiveStream, StagedTree
from ..integrity import compare_tree
from ..journal import running
from ..layout import BackupDirLayout
from ..log import get_logger, redact_text
from ..report import VerifyResult
from ..run import Run, error_text
from ..strays import stop_processes_under
from ..targets.base import Target
from .plan import RestorePlan, plan_restore

__all__ = ["drill", "drill_leftovers", "sweep_drills"]

log = get_logger(__name__)

#: The drill records this process holds (a drill in another thread is alive too).
_HELD: set[Path] = set()


def _record_path(scratch: Path) -> Path:
    """The record of the drill whose scratch tree is *scratch* (beside it)."""
    return scratch.with_name(f"{scratch.name}.json")


def _save(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def drill(
    run: Run,
    target: Target,
    cell: str,
    selector: Selector,
    dumpers: Sequence[Dumper] = (),
) -> VerifyResult:
    """Restore *cell* from *target* into a scratch directory, check it, time it, remove it.

    The archive *selector* picks (and its chain) is restored under the
    backup directory (:meth:`~cellvault.layout.BackupDirLayout.drill`), the
    tree compared with the manifest, the ``cellvault_health_check`` hooks
    run on it; the result's ``rto`` is how long it took. Each of *dumpers*
    that can stage (:meth:`~cellvault.dumpers.Dumper.stage`) loads its dump
    into a scratch object (a scratch database on its server), which exists
    while the health checks run and is dropped after: the RTO includes the
    loads. A dumper that cannot stage is not loaded, and the result says so.
    A failure at any step is alerted (operation ``verify``) and in the result.
    """
    return _Drill(run, target, cell, selector, tuple(dumpers))()


@attrs.define
class _Drill:
    run: Run
    target: Target
    cell: str
    selector: Selector
    dumpers: tuple[Dumper, ...] = ()
    started: float = attrs.field(factory=time.monotonic)
    #: What the result names: the planned archive, once it is known.
    archive: str = ""
    step: str = "plan"
    dumps: dict[str, str] = attrs.Factory(dict)

    #: What this drill creates, written before it creates it (see :func:`sweep_drills`).
    record: dict[str, Any] = attrs.Factory(dict)
    record_path: Path | None = None
    cleaned: list[str] = attrs.Factory(list)
    #: Scratch objects whose drop failed (the record is kept for the next run).
    undropped: list[str] = attrs.Factory(list)

    def __call__(self) -> VerifyResult:
        scratch = self.run.layout.drill(self.run.id, self.target.name, self.cell)
        self.archive = f"cell_{self.cell}"
        try:
            # What drills of this cell killed mid-way left goes first (and is said).
            self.cleaned = sweep_drills(self.run.layout, {self.cell: self.dumpers}, self.cell)
            self.started = time.monotonic()  # the RTO is the restore's alone
            self._begin(scratch)
            tree, compared = self._restore(scratch)
            rto = time.monotonic() - self.started
        except Exception as exc:  # noqa: BLE001 - alerted and reported in the result
            return self._failed(exc)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self._end()
            with contextlib.suppress(OSError):
                scratch.parent.rmdir()
        log.info(
            "drill.ok",
            run=self.run.id,
            cell=self.cell,
            target=self.target.name,
            archive=self.archive,
            files=tree.files,
            bytes=tree.bytes,
            paths=compared,
            rto=round(rto, 3),
        )
        return VerifyResult(
            archive=self.archive,
            target=self.target.name,
            ok=True,
            level="drill",
            members=compared,
            files=tree.files,
            bytes=tree.bytes,
            rto=rto,
            duration=time.monotonic() - self.started,
            dumps=dict(self.dumps),
            cleaned=tuple(self.cleaned),
        )

    def _begin(self, scratch: Path) -> None:
        """Write the drill's record before its scratch tree and objects exist."""
        scratch.parent.mkdir(parents=True, exist_ok=True)
        self.record_path = _record_path(scratch)
        self.record = {
            "cell": self.cell,
            "target": self.target.name,
            "run": self.run.id,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "scratch": str(scratch),
            "sides": [],
        }
        _HELD.add(self.record_path)
        _save(self.record_path, self.record)

    def _side(self, side: StagedLoad) -> None:
        """A scratch object is about to be created: recorded first."""
        if self.record_path is not None:
            self.record["sides"] = [*self.record["sides"], side.state()]
            _save(self.record_path, self.record)

    def _end(self) -> None:
        """The drill is over: its record goes, unless a scratch object could not be dropped."""
        if self.record_path is not None:
            if not self.undropped:
                self.record_path.unlink(missing_ok=True)
            _HELD.discard(self.record_path)  # a record left is the next run's to settle

    def _restore(self, scratch: Path) -> tuple[StagedTree, int]:
        """Restore, compare, health-check; return the tree and the paths compared."""
        plan = plan_restore(self.run.config, self.cell, self.selector, [self.target], scratch)
        self.archive = str(plan.sidecar.id)
        root = scratch / self.cell
        self.step = "fetch"
        has_dumps = any(e.path.startswith(f"{DUMPS_ROOT}/") for e in plan.manifest)
        dumps = scratch / ".cellvault-dumps"
        tree = StagedTree(
            staging=root,
            manifest=plan.manifest,
            archive=self.archive,
            dumps=dumps if has_dumps else None,
        )
        tree.prepare()
        for sidecar in [*plan.chain, plan.sidecar]:
            with self.target.open_archive(sidecar) as raw:
                tree.take(ArchiveStream(raw, sidecar, self.target.name))
        self.step = "check"
        tree.finish()
        compared = compare_tree(root, plan.manifest)
        sides: list[StagedLoad] = []
        try:
            if has_dumps and self.dumpers:
                self.step = "load dumps"
                self._load(plan, root, dumps, scratch, sides)
            self.step = "health check"
            # The hook spec may come from a newer cellvault than a plugin manager built by hand.
            if hasattr(self.run.plugins.hook, "cellvault_health_check"):
                self.run.plugins.hook.cellvault_health_check(
                    cell=plan.cell, meta=plan.sidecar.meta, root=root
                )
        finally:
            for side in sides:
                try:
                    side.discard()
                except Exception as exc:  # noqa: BLE001 - the record stays: the next run retries
                    self.undropped.append(side.side)
                    log.error("drill.scratch_kept", cell=self.cell, side=side.side, error=str(exc))
        return tree, compared

    def _load(
        self, plan: RestorePlan, root: Path, dumps: Path, scratch: Path, sides: list[StagedLoad]
    ) -> None:
        """Load every dump that can stage into a scratch object (dropped by the caller)."""
        skipped: list[str] = []
        why: dict[str, str] = {}
        load_staged_dumps(
            cell=plan.cell,
            meta=plan.sidecar.meta,
            dumpers=self.dumpers,
            dumps=dumps,
            spool=scratch / ".cellvault-load",
            staged_roots={
                plan.cell.roots[r]: root / r
                for r in plan.sidecar.meta.roots
                if r in plan.cell.roots
            },
            sides=sides,
            no_live=skipped,
            not_staged=why,
            on_side=self._side,
            on_start=lambda d: self.run.emit("drill.dump_loading", cell=self.cell, dumper=d),
        )
        for side in sides:
            self.dumps[side.dumper] = f"loaded into {side.side or 'the drill tree'}, then dropped"
        for name in skipped:
            self.dumps[name] = (
                f"not loaded: this dumper cannot stage into a scratch object ({why.get(name)})"
            )

    def _failed(self, exc: Exception) -> VerifyResult:
        # A health check that raises is a verdict on the data, not a crash.
        if not isinstance(exc, CellvaultError) and self.step != "health check":
            log.exception(
                "drill.crashed",
                run=self.run.id,
                cell=self.cell,
                target=self.target.name,
                step=self.step,
            )
        error = f"drill failed at {self.step}: {error_text(exc)}"
        self.run.fail(
            "drill",
            error,
            cell=self.cell,
            target=self.target.name,
            archive=self.archive if ArchiveId.is_id(self.archive) else None,
            operation="verify",
        )
        return VerifyResult(
            archive=self.archive,
            target=self.target.name,
            ok=False,
            level="drill",
            error=error,
            duration=time.monotonic() - self.started,
            cleaned=tuple(self.cleaned),
        )


def _records(layout: BackupDirLayout, cell: str | None) -> list[tuple[Path, dict[str, Any]]]:
    folder = layout.private / "drill"
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and (cell is None or data.get("cell") == cell):
            out.append((path, data))
    return out


def _dead(path: Path, data: Mapping[str, Any]) -> bool:
    """Whether the drill that wrote *data* is gone (this host only; never a live one)."""
    if data.get("host") != socket.gethostname():
        return False
    if data.get("pid") == os.getpid():
        return path not in _HELD
    return not running(data)


def sweep_drills(
    layout: BackupDirLayout,
    dumpers: Mapping[str, Sequence[Dumper]],
    cell: str | None = None,
) -> list[str]:
    """Remove what drills killed mid-way left (of *cell*, or every cell); say what, per drill.

    A drill writes its record (``.cellvault/drill/<run>-<target>-<cell>.json``)
    before it creates its scratch tree, and adds each scratch object
    (a scratch database or schema, a Redis ``swap_db``) before creating it.
    For a record whose drill is gone (its pid, on this host), the helper
    processes started under its scratch tree (a scratch ``redis-server``)
    are stopped, each scratch object is dropped through its dumper
    (:meth:`~cellvault.dumpers.Dumper.resume`, then
    :meth:`~cellvault.dumpers.staging.StagedLoad.discard`), and the tree and
    the record are removed. A scratch object that cannot be dropped keeps the
    record, and is named.
    """
    out = []
    for path, data in _records(layout, cell):
        if not _dead(path, data):
            continue
        name = str(data.get("cell"))
        scratch = Path(str(data.get("scratch")))
        removed: list[str] = []
        left: list[str] = []
        if scratch.parent == layout.private / "drill":
            removed += stop_processes_under([scratch])
        mine = {d.name: d for d in dumpers.get(name, ())}
        for state in data.get("sides") or ():
            label = f"{state.get('side')} ({state.get('what')})"
            dumper = mine.get(str(state.get("dumper")))
            try:
                side = None if dumper is None else dumper.resume(state)
                if side is None:
                    left.append(f"{label}: dumper {state.get('dumper')} cannot rebuild it")
                    continue
                side.discard()
                removed.append(f"scratch {label}")
            except Exception as exc:  # noqa: BLE001 - named for a person to settle
                left.append(f"{label}: {redact_text(str(exc))}")
        if scratch.parent == layout.private / "drill" and scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
            removed.append(f"scratch tree {scratch}")
        text = (
            f"a drill of cell {name} from target {data.get('target')} (run {data.get('run')}, "
            f"pid {data.get('pid')}) was killed mid-way; removed what it left: "
            f"{', '.join(removed) or 'nothing was left'}"
        )
        if left:
            text += f"; could not remove (settle by hand): {'; '.join(left)}"
            data["sides"] = [
                s for s in data.get("sides") or () if any(str(s.get("side")) in x for x in left)
            ]
            _save(path, data)
        else:
            path.unlink(missing_ok=True)
        log.warning("drill.leftovers_removed", cell=name, detail=text)
        out.append(text)
    return out


def drill_leftovers(layout: BackupDirLayout, cell: str | None = None) -> list[str]:
    """What killed drills left (nothing removed), one sentence each."""
    out = []
    for path, data in _records(layout, cell):
        if _dead(path, data):
            sides = ", ".join(str(s.get("side")) for s in data.get("sides") or ())
            out.append(
                f"a killed drill of cell {data.get('cell')} (run {data.get('run')}) left its "
                f"scratch tree {data.get('scratch')}"
                + (f" and scratch objects {sides}" if sides else "")
                + ": the next drill or restore of the cell removes them"
            )
    return out
