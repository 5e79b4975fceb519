"""A read-only view of a cell's points in time, and its FUSE mount.

:class:`PointView` is the tree of one point (or of every point, one dated
directory each, named by archive id) built from manifests alone; a file's
bytes are fetched on first read: the archive that holds them is streamed up
to that member (the rest of the stream is not read), the bytes are checked
against the manifest's sha256 and kept in a :class:`MemberCache`, a folder
bounded in bytes whose least recently used files are dropped first.

:func:`mount` serves a view through FUSE with ``mfusepy`` (the optional
extra ``cellvault[mount]``, and libfuse 2 or 3 on the host); it runs in the
foreground until the mount point is unmounted (``fusermount -u``) or the
process is interrupted. Where FUSE or the binding is missing,
:class:`~cellvault.errors.ConfigError` says what to install.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ..archive import Selector, Sidecar
from ..config import Config
from ..errors import ArchiveCorrupt, CellvaultError, ConfigError
from ..extract import ArchiveStream
from ..log import get_logger
from ..manifest import Entry
from ..targets.base import Target
from .browse import cell_path, open_point, points_of
from .plan import RestorePlan
from .resources import Resources

__all__ = ["DEFAULT_CACHE_BYTES", "MemberCache", "PointView", "mount", "open_view"]

log = get_logger(__name__)

#: How many bytes of fetched files the cache keeps by default (256 MiB).
DEFAULT_CACHE_BYTES = 256 << 20


@attrs.define
class MemberCache:
    """Fetched files in a folder, at most *limit* bytes, least recently used dropped first.

    A file larger than the limit is still fetched (and dropped at the next
    fetch): a reader holding it open keeps its bytes until it closes it.
    """

    folder: Path
    limit: int = DEFAULT_CACHE_BYTES
    _files: collections.OrderedDict[tuple[str, str], tuple[Path, int]] = attrs.field(
        init=False, factory=collections.OrderedDict
    )
    _size: int = attrs.field(init=False, default=0)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    fetches: int = attrs.field(init=False, default=0)

    @property
    def size(self) -> int:
        """The bytes the cache holds now."""
        return self._size

    def get(self, key: tuple[str, str]) -> Path | None:
        with self._lock:
            found = self._files.get(key)
            if found is None:
                return None
            self._files.move_to_end(key)
            return found[0]

    def put(self, key: tuple[str, str], path: Path, size: int) -> None:
        with self._lock:
            self.fetches += 1
            self._files[key] = (path, size)
            self._size += size
            while self._size > self.limit and len(self._files) > 1:
                _, (old, old_size) = self._files.popitem(last=False)
                old.unlink(missing_ok=True)
                self._size -= old_size

    def slot(self) -> Path:
        """A fresh file name in the folder."""
        fd, name = tempfile.mkstemp(dir=self.folder, prefix="member-")
        os.close(fd)
        return Path(name)


@attrs.define
class PointView:
    """The read-only tree of one point, or of every point under its archive id."""

    target: Target
    #: FUSE path (``/crm/a.txt`` or ``/<archive>/crm/a.txt``) -> entry.
    entries: dict[str, Entry]
    #: FUSE path of a directory -> the names in it.
    children: dict[str, list[str]]
    sidecars: dict[str, Sidecar]
    cache: MemberCache
    #: The mtime of the top directory and of each dated one.
    mtime_ns: int = 0

    def lookup(self, path: str) -> Entry | None:
        return self.entries.get(path)

    def attributes(self, path: str) -> dict[str, int]:
        """``stat`` fields of *path*; :class:`FileNotFoundError` when there is none."""
        if path in self.children and path not in self.entries:
            mode, size, mtime, uid, gid = stat.S_IFDIR | 0o555, 0, self.mtime_ns, 0, 0
        else:
            entry = self.entries.get(path)
            if entry is None:
                raise FileNotFoundError(errno.ENOENT, "no such path in the archive", path)
            kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(entry.type, stat.S_IFREG)
            size = len(entry.target or "") if entry.type == "symlink" else entry.size
            mode, mtime, uid, gid = (
                kind | (entry.mode & 0o7555),
                entry.mtime_ns,
                entry.uid,
                entry.gid,
            )
        return {
            "st_mode": mode,
            "st_nlink": 2 if stat.S_ISDIR(mode) else 1,
            "st_size": size,
            "st_uid": uid,
            "st_gid": gid,
            # In nanoseconds: the operations set use_ns.
            "st_mtime": mtime,
            "st_atime": mtime,
            "st_ctime": mtime,
        }

    def file(self, path: str) -> Path:
        """A local copy of the file at *path*, fetched (and cached) on first use."""
        entry = self.entries.get(path)
        if entry is None or entry.type != "file" or entry.archive is None:
            raise FileNotFoundError(errno.ENOENT, "not a file in the archive", path)
        key = (entry.archive, entry.path)
        cached = self.cache.get(key)
        if cached is not None and cached.exists():
            return cached
        local = self.cache.slot()
        self._fetch(entry, local)
        self.cache.put(key, local, entry.size)
        return local

    def read(self, path: str, size: int, offset: int) -> bytes:
        with open(self.file(path), "rb") as f:
            f.seek(offset)
            return f.read(size)

    def _fetch(self, entry: Entry, local: Path) -> None:
        """Stream the holder of *entry* up to its member; write and check its bytes."""
        assert entry.archive is not None
        sidecar = self.sidecars[entry.archive]
        with self.target.open_archive(sidecar) as raw:
            stream = ArchiveStream(raw, sidecar, self.target.name)
            try:
                for _member, name, data in stream.members():
                    if name != entry.path or data is None:
                        continue
                    digest = hashlib.sha256()
                    with open(local, "wb") as out:
                        while block := data.read():
                            digest.update(block)
                            out.write(block)
                    if digest.hexdigest() != entry.sha256:
                        raise stream.corrupt(
                            "content does not match the manifest (sha256 differs)", member=name
                        )
                    log.debug("mount.fetched", archive=entry.archive, member=name)
                    return
            finally:
                stream.close()
        raise ArchiveCorrupt(
            "listed in the manifest but missing from the archive",
            archive=entry.archive,
            member=entry.path,
            target=self.target.name,
        )


def open_view(
    config: Config,
    res: Resources,
    cell: str,
    cache_dir: Path,
    *,
    select: str | Selector | None = "latest",
    source: Sequence[str] | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> PointView:
    """The view of the point *select* picks, or of every point with *select* ``None``."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = MemberCache(cache_dir, cache_bytes)
    plans: list[tuple[str | None, RestorePlan]]
    if select is not None:
        plans = [(None, open_point(config, res, cell, select, source))]
    else:
        ids = sorted(points_of(res, cell, source))
        if not ids:
            raise ConfigError(f"cell {cell} has no archive on any target")
        plans = [(str(i), open_point(config, res, cell, str(i), source)) for i in ids]
    first = plans[-1][1]
    view = PointView(
        target=first.target,
        entries={},
        children={"/": []},
        sidecars={},
        cache=cache,
        mtime_ns=int(first.sidecar.meta.backed_at.timestamp() * 1e9),
    )
    for dated, plan in plans:
        _add_point(view, dated, plan)
    return view


def _add_point(view: PointView, dated: str | None, plan: RestorePlan) -> None:
    if plan.target is not view.target:
        raise ConfigError(
            f"the points of cell {plan.cell.name} are on different targets",
            hint="mount them one at a time with --date, or name one target with --source",
        )
    for sidecar in [*plan.chain, plan.sidecar]:
        view.sidecars[str(sidecar.id)] = sidecar
    top = "" if dated is None else f"/{dated}"
    if dated is not None:
        view.children["/"].append(dated)
        view.children[top] = []
    for entry in plan.manifest:
        rel = cell_path(entry.path)
        if rel is None:
            continue
        path = f"{top}/{rel}"
        view.entries[path] = entry
        parent, _, name = path.rpartition("/")
        view.children.setdefault(parent or "/", []).append(name)
        if entry.type == "dir":
            view.children.setdefault(path, [])


def mount(view: PointView, mountpoint: Path, *, foreground: bool = True) -> None:
    """Serve *view* read-only at *mountpoint* through FUSE until it is unmounted."""
    fuse = load_fuse()
    if not mountpoint.is_dir():
        raise ConfigError(f"mount point {mountpoint} is not a directory", hint="create it first")
    operations = _operations(fuse, view)
    log.info("mount.serving", mountpoint=str(mountpoint), target=view.target.name)
    try:
        fuse.FUSE(operations, str(mountpoint), foreground=foreground, ro=True, nothreads=True)
    except RuntimeError as exc:
        raise ConfigError(
            f"FUSE could not mount {mountpoint} ({exc})",
            hint="check that /dev/fuse exists and is usable here (in a container: --device /dev/fuse "
            "--cap-add SYS_ADMIN) and that the mount point is empty",
        ) from None
    finally:
        shutil.rmtree(view.cache.folder, ignore_errors=True)


def load_fuse() -> Any:
    """The ``mfusepy`` module, with libfuse; :class:`ConfigError` saying what is missing."""
    try:
        import mfusepy  # an optional extra: imported only when mounting
    except ImportError:
        raise ConfigError(
            "mounting needs the FUSE binding mfusepy, which is not installed",
            hint="pip install 'cellvault[mount]'; or browse with 'cellvault ls' and restore with "
            "'cellvault restore --path ... --into DIR'",
        ) from None
    except OSError as exc:
        raise ConfigError(
            f"mounting needs libfuse, which was not found ({exc})",
            hint="install libfuse3 (Debian/Ubuntu: apt-get install fuse3)",
        ) from None
    if not os.path.exists("/dev/fuse"):
        raise ConfigError(
            "mounting needs FUSE, and /dev/fuse does not exist on this machine",
            hint="load the fuse module (modprobe fuse) or, in a container, pass --device /dev/fuse",
        )
    return mfusepy


def _operations(fuse: Any, view: PointView) -> Any:
    """The FUSE operations over *view* (a subclass of the binding's ``Operations``)."""

    class Operations(fuse.Operations):  # type: ignore[misc]
        use_ns = True

        def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
            return view.attributes(path)

        def readdir(self, path: str, fh: Any) -> list[str]:
            if path not in view.children:
                raise fuse.FuseOSError(errno.ENOTDIR)
            return [".", "..", *view.children[path]]

        def readlink(self, path: str) -> str:
            entry = view.lookup(path)
            if entry is None or entry.type != "symlink":
                raise fuse.FuseOSError(errno.EINVAL)
            return entry.target or ""

        def open(self, path: str, flags: int) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
                raise fuse.FuseOSError(errno.EROFS)
            _fetched(fuse, view, path)
            return 0

        def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
            with open(_fetched(fuse, view, path), "rb") as f:
                f.seek(offset)
                return f.read(size)

    return Operations()


def _fetched(fuse: Any, view: PointView, path: str) -> Path:
    """:meth:`PointView.file`, its failures logged and turned into an I/O error for the reader."""
    try:
        return view.file(path)
    except FileNotFoundError:
        raise fuse.FuseOSError(errno.ENOENT) from None
    except (CellvaultError, OSError) as exc:
        log.error("mount.read_failed", path=path, error=str(exc))
        raise fuse.FuseOSError(errno.EIO) from None
