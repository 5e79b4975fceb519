"""The restore journal: what an interrupted restore of a cell had done, and how to settle it.

A restore writes one small JSON file per cell beside its staging directory
(``.cellvault-journal-<cell>.json``, replaced atomically at each phase): the
archive, the staging directory, for each root its destination, where its
staged tree is and the inodes of the live and the staged tree, the safety
backup, and which dumps were loaded into the live databases. It is deleted
once the restore of the cell is settled.

A restore killed at any point leaves the journal behind. The next run that
touches the cell (a backup or a restore) calls :func:`recover` first, which
reads where each root is by its inode, asks each staged database whether its
swap took effect (through its dumper, :meth:`~cellvault.dumpers.Dumper.resume`),
and then:

* before any swap, or during the swap of a cell before anything was swapped
  in, or when a staged database cannot say where it is: **rolls back** --
  every swapped database goes back (its old state is swapped in again), every
  scratch database is dropped, every root goes back to its live data, the
  staged data (a copy of the archive) is removed;
* during the swap of a cell once something is swapped in (a database or a
  root), when every staged database can be swapped: **finishes** the swap,
  so files and databases are all new;
* after the swap: **finishes** -- the old data (files and databases) is
  removed only when a safety backup holds it, otherwise it is kept (and
  named) beside the live data.

A restore killed before its journal was written (while extracting or
checking) leaves only its staging directory (``.cellvault-restore-<archive>-<hex>``,
its owner file ``<name>.owner.json``, and the copies of roots on other file
systems that the owner file names).
Nothing live is ever moved into a staging directory before the journal
exists, so such a directory holds only a copy of the archive: once its owner
file shows the restore that made it (an in-place restore of the cell, on this
host) is gone, :func:`recover` removes it, with any helper process still
running under it (a scratch ``redis-server``), and says so. One it cannot
prove dead (another host, no owner file, a restore elsewhere) is left, and
:func:`debris` names it (``cellvault status`` prints it).

A restore killed while a dumper that cannot stage was loading into a live
database cannot be settled here: that database may hold part of the
archive. The files are rolled back and the result says which databases need
the restore run again (or the safety backup restored). Nothing is ever
deleted that is the only copy of live data.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from .dumpers.staging import StagedLoad
from .forking import alive
from .log import get_logger, redact_text
from .strays import stop_processes_under
from .swap import HELD, OWNER_SUFFIX, STAGING_PREFIX, Swap, exchange, owner_path, read_owner

__all__ = ["JOURNAL_PREFIX", "Journal", "Recovery", "debris", "find", "recover", "running"]

log = get_logger(__name__)

JOURNAL_PREFIX = ".cellvault-journal-"

#: The phases a journal records, in order (``rolling back``: a failed swap is being undone).
PHASES = ("staged", "loading", "swapping", "swapped", "rolling back")


def _ino(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except FileNotFoundError:
        return None


def _write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


@attrs.define
class Journal:
    """The journal of one cell's restore (written by the restore, read by :func:`recover`)."""

    path: Path
    data: dict[str, Any]

    @classmethod
    def start(cls, cell: str, archive: str, swap: Swap, safety_backup: str | None) -> Journal:
        """Write the journal of a staged cell (phase ``staged``), beside its staging directory."""
        path = swap.staging.parent / f"{JOURNAL_PREFIX}{cell}.json"
        data: dict[str, Any] = {
            "cell": cell,
            "archive": archive,
            "staging": str(swap.staging),
            "safety_backup": safety_backup,
            "phase": "staged",
            "loaded": [],
            "loading": None,
            "roots": {},
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        journal = cls(path, data)
        journal.note_roots(swap)
        return journal

    def note_roots(self, swap: Swap) -> None:
        """Record each root's destination, staged tree and inodes (before any swap)."""
        self.data["roots"] = {
            root: {
                "dest": str(dest),
                "placed": str(swap.placed.get(root, swap.staging / root)),
                "old_ino": _ino(dest),
                "new_ino": _ino(swap.placed.get(root, swap.staging / root)),
            }
            for root, dest in swap.dests.items()
        }
        self._save()

    def phase(self, phase: str) -> None:
        """Move to *phase* (one of :data:`PHASES`)."""
        self.data["phase"] = phase
        self._save()

    def loading(self, dumper: str) -> None:
        """The dump of *dumper* is about to be loaded into its live database."""
        self.data["phase"] = "loading"
        self.data["loading"] = dumper
        self._save()

    def staged(self, sides: Sequence[Mapping[str, Any]]) -> None:
        """Dumps are loaded into side objects (their :meth:`StagedLoad.state`), not yet swapped in."""
        self.data["staged"] = [str(s.get("dumper")) for s in sides]
        self.data["sides"] = [dict(s) for s in sides]
        self._save()

    def swapping(self, dumper: str) -> None:
        """The staged load of *dumper* is about to be swapped in."""
        self.data["swapping"] = dumper
        self._save()

    def unswapped(self, dumper: str) -> None:
        """The staged load of *dumper* was swapped back out (a failed swap is rolled back)."""
        self.data["phase"] = "rolling back"
        self.data["loaded"] = [d for d in self.data["loaded"] if d != dumper]
        self.data["swapping"] = None
        self._save()

    def loaded(self, dumper: str) -> None:
        """The dump of *dumper* is loaded (a staged one: swapped in)."""
        self.data["loaded"] = [*self.data["loaded"], dumper]
        self.data["loading"] = None
        self.data["swapping"] = None
        self._save()

    def close(self) -> None:
        """The cell's restore is settled: delete the journal."""
        self.path.unlink(missing_ok=True)

    def _save(self) -> None:
        _write_atomic(self.path, self.data)


#: Rebuilds a staged load from its journal state (``None``: it cannot be).
Resume = Callable[[Mapping[str, Any]], StagedLoad | None]


@attrs.frozen
class Recovery:
    """What :func:`recover` did with one interrupted restore of a cell."""

    cell: str
    archive: str
    #: ``rolled back`` or ``finished``.
    action: str
    #: Root -> what became of it.
    roots: Mapping[str, str]
    #: The dumps the interrupted restore had loaded (and the one it was loading, if any).
    loaded: tuple[str, ...] = ()
    partly_loaded: str | None = None
    safety_backup: str | None = None
    #: Paths kept because they may be the only copy of something.
    kept: tuple[str, ...] = ()
    #: Side objects (scratch databases, files) left for a person to settle.
    sides: tuple[str, ...] = ()
    #: Staged database (dumper) -> what the recovery did with it.
    dumps: Mapping[str, str] = attrs.field(factory=dict)
    #: Dumpers that loaded into their live databases (they cannot stage).
    live_loads: tuple[str, ...] = ()
    #: What was removed (action ``cleaned up``: an unjournalled staging directory).
    removed: tuple[str, ...] = ()
    #: Said instead of the sentence above (a killed drill's leftovers, removed).
    note: str = ""

    @property
    def settled(self) -> bool:
        """True when the cell is wholly old or wholly new again."""
        if self.partly_loaded is not None or self.sides:
            return False
        return self.action == "finished" or not self.live_loads

    def describe(self) -> str:
        """One sentence saying what was found and done."""
        if self.note:
            return self.note
        if self.action == "cleaned up":
            return (
                f"a restore of cell {self.cell} to {self.archive} was killed before its journal "
                "was written (so before any live data was touched); removed what it had staged, "
                f"which held only a copy of the archive: {', '.join(self.removed)}"
            )
        text = f"an interrupted restore of cell {self.cell} to {self.archive} was {self.action}"
        for dumper, done in self.dumps.items():
            text += f"; dumper {dumper}: {done}"
        if self.live_loads or self.partly_loaded:
            dbs = ", ".join(self.live_loads)
            if self.action != "finished":
                text += f"; the databases of dumpers {dbs or 'none'} already hold the archive"
            if self.partly_loaded:
                text += f", dumper {self.partly_loaded} may hold part of it"
            if self.action != "finished":
                way = (
                    f"restore {self.safety_backup} to go back"
                    if self.safety_backup
                    else "no safety backup was taken"
                )
                text += f": run the restore again to finish it ({way})"
        if self.sides:
            text += f"; it may have left the scratch objects {', '.join(self.sides)} (settle them)"
        if self.kept:
            text += f"; the old data is kept at {', '.join(self.kept)}"
        return text


def find(cell: str, dests: Iterable[Path]) -> list[Path]:
    """The journals of *cell* beside any of *dests*."""
    seen: dict[Path, None] = {}
    for dest in dests:
        path = dest.parent / f"{JOURNAL_PREFIX}{cell}.json"
        if path.is_file():
            seen[path] = None
    return list(seen)


def recover(cell: str, dests: Iterable[Path], resume: Resume | None = None) -> list[Recovery]:
    """Settle every interrupted restore of *cell* whose journal sits beside one of *dests*.

    *resume* rebuilds a staged database from its journal state (the cell's
    dumper's :meth:`~cellvault.dumpers.Dumper.resume`); without it, or when
    it returns ``None``, a side object is named for a person to settle.
    """
    out = []
    dests = list(dests)
    live = unreadable = False
    for path in find(cell, dests):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.error("restore.journal_unreadable", cell=cell, journal=str(path), error=str(exc))
            unreadable = True
            continue
        if not isinstance(data, dict) or data.get("cell") != cell:
            continue
        if _running(data):
            log.info("restore.journal_live", cell=cell, journal=str(path), pid=data.get("pid"))
            live = True
            continue
        rec = _settle(data, resume)
        path.unlink(missing_ok=True)
        log.warning("restore.recovered", cell=cell, action=rec.action, detail=rec.describe())
        out.append(rec)
    if not live:
        _drop_torn_writes(cell, dests)
    if not unreadable:  # a journal that cannot be read may name a staging directory
        out.extend(_sweep_staging(cell, dests))
    return out


@attrs.frozen
class _Staging:
    """A staging directory beside a cell's destination, and what its owner file says."""

    path: Path
    owner: Mapping[str, Any] | None
    #: Named by a journal (settled by :func:`recover`, not swept).
    journalled: bool

    @property
    def cell(self) -> str | None:
        return None if self.owner is None else str(self.owner.get("cell"))

    def copies(self) -> list[Path]:
        return [Path(str(c)) for c in (self.owner or {}).get("copies") or ()]

    def dead(self) -> bool:
        """Made by an in-place restore on this host whose process is gone."""
        owner = self.owner
        if owner is None or not owner.get("in_place") or owner.get("host") != socket.gethostname():
            return False
        if owner.get("pid") == os.getpid():
            return self.path not in HELD  # this process: held while its swap is
        return not _running(owner)

    def why_kept(self) -> str:
        owner = self.owner
        if self.journalled:
            return "named by a restore journal"
        if owner is None:
            return "no owner file says which run made it; remove it once no restore runs"
        if owner.get("host") != socket.gethostname():
            return f"made on host {owner.get('host')}; remove it there"
        if not owner.get("in_place"):
            return "made by a restore elsewhere (--into)"
        return f"its restore (pid {owner.get('pid')}) is still running"


def _journalled(parent: Path) -> set[Path]:
    """The staging directories the journals in *parent* name.

    Only staging directories are listed by :func:`_stagings` (by owner file,
    or by a cell's staging name), so a journal's staging is all there is to
    match: the copies it placed on other file systems have neither, and go
    with the journal when :func:`recover` settles it.
    """
    named: set[Path] = set()
    for path in parent.glob(f"{JOURNAL_PREFIX}*.json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            named.add(Path(str(data.get("staging"))))
    return named


def _stagings(cell: str, dests: Iterable[Path]) -> list[_Staging]:
    """The staging directories of *cell* (by owner file, or by name) beside *dests*."""
    out = []
    for parent in dict.fromkeys(dest.parent for dest in dests):
        if not parent.is_dir():
            continue
        named = _journalled(parent)
        for path in sorted(parent.glob(f"{STAGING_PREFIX}*")):
            if not path.is_dir() or path.is_symlink():
                continue
            owner = read_owner(path)
            if owner is None and not re.fullmatch(
                rf"{re.escape(STAGING_PREFIX)}cell_{re.escape(cell)}_\d{{8}}_\d{{6}}-[0-9a-f]{{8}}",
                path.name,
            ):
                continue  # a copy across file systems, or another cell's
            if owner is not None and owner.get("cell") != cell:
                continue
            out.append(_Staging(path, owner, path in named))
        for file in sorted(parent.glob(f"{STAGING_PREFIX}*{OWNER_SUFFIX}")):
            # An owner file without its directory: killed just before mkdir, or after rmtree.
            path = file.with_name(file.name.removesuffix(OWNER_SUFFIX))
            owner = read_owner(path)
            if not path.exists() and owner is not None and owner.get("cell") == cell:
                out.append(_Staging(path, owner, path in named))
    return out


def _sweep_staging(cell: str, dests: Iterable[Path]) -> list[Recovery]:
    """Remove the unjournalled staging of *cell* that a dead in-place restore left."""
    out = []
    for staging in _stagings(cell, dests):
        if staging.journalled or not staging.dead():
            continue
        removed = [str(staging.path)] if staging.path.exists() else []
        removed += stop_processes_under([staging.path, *staging.copies()])
        for copy in staging.copies():
            if copy.name.startswith(STAGING_PREFIX) and (copy.exists() or copy.is_symlink()):
                _remove(copy)
                removed.append(str(copy))
        _remove(staging.path)
        owner_path(staging.path).unlink(missing_ok=True)
        removed = removed or [f"{owner_path(staging.path)} (its staging directory was gone)"]
        rec = Recovery(
            cell=cell,
            archive=str((staging.owner or {}).get("archive")),
            action="cleaned up",
            roots={},
            removed=tuple(removed),
        )
        log.warning("restore.staging_removed", cell=cell, detail=rec.describe())
        out.append(rec)
    return out


def debris(cell: str, dests: Iterable[Path]) -> list[str]:
    """What interrupted restores of *cell* left beside *dests*, one sentence each (nothing removed).

    Journals of restores that were killed (the next restore or backup of
    the cell settles them), staging directories, and old data a recovery
    kept (``.cellvault-replaced-*``).
    """
    dests = list(dests)
    out = []
    for path in find(cell, dests):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            out.append(f"unreadable restore journal {path}: read it, then settle the cell by hand")
            continue
        state = "running" if isinstance(data, dict) and _running(data) else "killed"
        if state == "killed":
            out.append(
                f"restore journal {path} of a killed restore (phase {data.get('phase')}): "
                "the next restore or backup of the cell settles it"
            )
    for staging in _stagings(cell, dests):
        if staging.journalled:
            continue
        if staging.dead() and not staging.path.exists():
            out.append(
                f"owner file {owner_path(staging.path)} of a killed restore (its staging "
                "directory is gone): the next restore or backup of the cell removes it"
            )
        elif staging.dead():
            out.append(
                f"staging directory {staging.path} of a killed restore: it holds only a copy "
                "of the archive; the next restore or backup of the cell removes it"
            )
        elif (
            staging.owner is None
            or staging.owner.get("host") != socket.gethostname()
            or (not staging.owner.get("in_place") and not _running(staging.owner))
        ):
            out.append(f"staging directory {staging.path}: {staging.why_kept()}")
    for parent in dict.fromkeys(dest.parent for dest in dests):
        for dest in dests:
            if dest.parent != parent or not parent.is_dir():
                continue
            for kept in sorted(parent.glob(f".cellvault-replaced-{dest.name}-*")):
                out.append(
                    f"old data {kept} kept by the recovery of a killed restore (perhaps the only "
                    "copy of what the restore replaced): check it, then remove it"
                )
    return out


def _drop_torn_writes(cell: str, dests: Iterable[Path]) -> None:
    """Remove the half-written journal copies a restore killed mid-write left (never read)."""
    for parent in {dest.parent for dest in dests}:
        for tmp in parent.glob(f"{JOURNAL_PREFIX}{cell}.json.*.tmp"):
            tmp.unlink(missing_ok=True)


def running(data: Mapping[str, Any]) -> bool:
    """Whether the process *data* names (``pid`` and ``host``) runs, on this host.

    ``False`` for another host, or for this very process (a record it wrote
    earlier and did not remove); callers that may run twice in one process
    keep a set of what they hold.
    """
    return _running(data)


def _running(data: Mapping[str, Any]) -> bool:
    """Whether the restore that wrote *data* is still running (on this host)."""
    pid = data.get("pid")
    if data.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
        return False
    if pid == os.getpid():
        return False
    return alive(pid)  # a killed restore not yet reaped (a zombie) runs no more


def _swapped(root: Mapping[str, Any]) -> bool:
    """Whether the staged tree of *root* is at its destination now."""
    return root.get("new_ino") is not None and _ino(Path(root["dest"])) == root["new_ino"]


@attrs.define
class _Side:
    """One staged database of an interrupted restore: its journal state, and where it is."""

    state: Mapping[str, Any]
    load: StagedLoad | None
    #: Swapped in (True), not (False), cannot tell (None).
    swapped: bool | None

    @property
    def name(self) -> str:
        return str(self.state.get("dumper"))

    def label(self) -> str:
        return f"{self.state.get('side')} ({self.name}, for {self.state.get('what')})"


def _sides(data: Mapping[str, Any], resume: Resume | None) -> list[_Side]:
    """The staged databases of *data*, rebuilt and asked whether their swap took effect."""
    loaded = set(data.get("loaded") or ())
    out = []
    for state in data.get("sides") or ():
        load: StagedLoad | None = None
        swapped: bool | None = None
        try:
            load = resume(state) if resume is not None else None
            if load is not None and state.get("dumper") == data.get("swapping"):
                swapped = load.swapped()  # the one swap (or swap back) that was under way
        except Exception as exc:  # noqa: BLE001 - a store that cannot answer: put everything back
            log.warning("restore.side_unknown", side=state.get("side"), error=redact_text(str(exc)))
            load = None
        name = state.get("dumper")
        if name in loaded:
            swapped = True  # journalled after its swap (and not swapped back since)
        elif name != data.get("swapping"):
            swapped = False  # never asked to swap, or swapped back: the store is not asked
        out.append(_Side(state, load, swapped))
    return out


def _settle_sides(
    sides: Sequence[_Side], forward: bool, safety: str | None
) -> tuple[dict[str, str], list[str]]:
    """Swap the staged databases in (*forward*) or put the old ones back; what was done, what is left."""
    done: dict[str, str] = {}
    left: list[str] = []
    for side in sides:
        what = side.state.get("what")
        old = side.state.get("old") or side.state.get("side")
        try:
            if side.load is None:
                if forward and side.swapped:
                    done[side.name] = f"swapped in ({what}); the replaced state is kept as {old}"
                    continue
                left.append(side.label())
                continue
            if forward:
                if not side.swapped:
                    side.load.swap()
                if safety:
                    side.load.commit()
                    done[side.name] = f"swapped in ({what}); the replaced state {old} dropped"
                else:
                    done[side.name] = f"swapped in ({what}); the replaced state is kept as {old}"
            else:
                if side.swapped:
                    side.load.unswap()
                side.load.discard()
                done[side.name] = f"put back ({what}); the scratch {side.state.get('side')} dropped"
        except Exception as exc:  # noqa: BLE001 - named for a person to settle
            log.error("restore.side_unsettled", side=side.label(), error=redact_text(str(exc)))
            left.append(f"{side.label()}: {redact_text(str(exc))}")
    return done, left


def _settle(data: Mapping[str, Any], resume: Resume | None = None) -> Recovery:
    roots: dict[str, dict[str, Any]] = dict(data.get("roots") or {})
    phase = data.get("phase")
    loaded = tuple(data.get("loaded") or ())
    partly = data.get("loading")
    sides = _sides(data, resume)
    staged = {side.name for side in sides}
    live_loads = tuple(d for d in loaded if d not in staged)
    # Swapped before the files: a root swapped in means every database was.
    something_new = bool(live_loads) or any(s.swapped for s in sides)
    # Forward only when every database can end up holding the archive.
    forward = phase == "swapped" or (
        phase == "swapping"
        and something_new
        and partly is None
        and all(s.swapped or (s.swapped is False and s.load is not None) for s in sides)
    )
    dumps, left = _settle_sides(sides, forward, data.get("safety_backup"))
    states: dict[str, str] = {}
    kept: list[str] = []
    for name, root in roots.items():
        dest, placed = Path(root["dest"]), Path(root["placed"])
        is_new = _swapped(root)
        if forward and not is_new and placed.exists():
            if dest.exists() or dest.is_symlink():
                exchange(placed, dest)
            else:
                os.rename(placed, dest)
            is_new = True
        elif not forward and is_new:
            if root.get("old_ino") is not None:
                exchange(placed, dest)
            else:
                os.rename(dest, placed)
            is_new = False
        states[name] = "new" if is_new else "live data kept"
        old_here = root.get("old_ino") is not None and _ino(placed) == root["old_ino"]
        if old_here and (not forward or not data.get("safety_backup")):
            kept.append(_keep(placed, dest))  # perhaps the only copy of the old data
    _drop_staged(data, roots, kept)
    return Recovery(
        cell=str(data.get("cell")),
        archive=str(data.get("archive")),
        action="finished" if forward else "rolled back",
        roots=states,
        loaded=loaded,
        partly_loaded=partly,
        safety_backup=data.get("safety_backup"),
        kept=tuple(kept),
        sides=tuple(left),
        dumps=dumps,
        live_loads=live_loads,
    )


def _keep(placed: Path, dest: Path) -> str:
    """Move old data out of the staging directory to a name beside *dest* that says what it is."""
    keep = dest.with_name(f".cellvault-replaced-{dest.name}-{secrets.token_hex(3)}")
    os.rename(placed, keep)
    return str(keep)


def _drop_staged(data: Mapping[str, Any], roots: Mapping[str, Any], kept: Sequence[str]) -> None:
    """Delete what is left of the staged data and the staging directory (never a kept path)."""
    staging = Path(str(data.get("staging")))
    for root in roots.values():
        placed = Path(root["placed"])
        if str(placed) in kept or placed.parent == staging:
            continue
        _remove(placed)
    _remove(staging)
    owner_path(staging).unlink(missing_ok=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)
