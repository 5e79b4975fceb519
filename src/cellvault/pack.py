"""Writing an archive: scan a cell, stream its files into a compressed tar.

The archive is written once into a spool directory; targets then store that
file. Memory stays bounded whatever the file sizes: files are read in 1 MiB
blocks, hashed while read, and tar bookkeeping is dropped as it goes. Only the
manifest (one small record per path) is held for the whole run.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import io
import os
import shutil
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

import attrs

from .archive import ArchiveId, ArchiveMeta
from .cell import Cell
from .codec import Codec, HashingWriter
from .dumpers.base import Dumper, DumpSummary, write_dumps
from .errors import BackupError
from .log import get_logger
from .manifest import Entry, Manifest

__all__ = ["PackResult", "Packer"]

log = get_logger(__name__)

BLOCK = 1 << 20
#: A file modified this close to (or after) the parent's scan start may have
#: changed without its mtime showing it: git's "racy" case. One second covers
#: file systems with coarse timestamps.
RACY_NS = 1_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@attrs.frozen
class PackResult:
    """A finished archive in the spool, ready to be stored."""

    meta: ArchiveMeta
    manifest: Manifest
    data_path: Path
    manifest_path: Path
    size: int
    sha256: str
    #: Files whose bytes this archive holds (changed files, for an incremental).
    files_stored: int
    #: Bytes of file data read and stored in this archive.
    bytes_stored: int
    #: Bytes of all live files of the cell (what a full backup would read).
    bytes_total: int
    warnings: tuple[str, ...] = ()
    #: What each of the cell's dumpers did (see :mod:`cellvault.dumpers`).
    dumps: tuple[DumpSummary, ...] = ()


class _Sink:
    """The tar writer's output: counts bytes so that ``tell()`` works on a stream."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.pos = 0

    def write(self, data: Any) -> int:
        n = self.raw.write(data)
        self.pos += len(data)
        return n if n is not None else len(data)

    def tell(self) -> int:
        return self.pos


class _FileSource:
    """Read exactly *size* bytes of an open file, hashing them as they pass.

    A file that shrinks while it is read is padded with zeros so that the tar
    stays valid; the manifest then records the hash of what was stored and a
    warning names the file.
    """

    def __init__(self, raw: IO[bytes], size: int, progress: Callable[[int], None]) -> None:
        self.raw = raw
        self.remaining = size
        self.digest = hashlib.sha256()
        self.short = False
        self.progress = progress

    def read(self, n: int = -1) -> bytes:
        if n < 0 or n > self.remaining:
            n = self.remaining
        data = self.raw.read(n)
        if len(data) < n:
            self.short = True
            data = data + b"\0" * (n - len(data))
        self.remaining -= n
        self.digest.update(data)
        self.progress(n)
        return data


@attrs.define
class Packer:
    """Build one archive of one cell.

    With a *parent* manifest, the archive is incremental: a file goes in only
    when its (size, mtime_ns, inode, mode) differ from the parent's, or when it
    was modified within :data:`RACY_NS` of the parent's scan; with *checksum*,
    every file is hashed and compared too. Unchanged files are listed in the
    manifest with the archive that holds their bytes.
    """

    cell: Cell
    ident: ArchiveId
    codec: Codec
    spool: Path
    host: str
    version: str
    reason: str = "scheduled"
    parent: Manifest | None = None
    parent_meta: ArchiveMeta | None = None
    checksum: bool = False
    on_progress: Callable[[int, int], None] | None = None
    #: Dumpers whose output goes under ``dumps/`` after the files, always fresh.
    dumpers: Sequence[Dumper] = ()
    #: Bytes of a dump held in memory before it is written as a part (default:
    #: :data:`cellvault.dumpers.base.DUMP_CHUNK`).
    dump_chunk: int | None = None

    _manifest: Manifest = attrs.field(init=False)
    _warnings: list[str] = attrs.field(init=False, factory=list)
    _files_stored: int = attrs.field(init=False, default=0)
    _bytes_stored: int = attrs.field(init=False, default=0)
    _bytes_total: int = attrs.field(init=False, default=0)
    _done: int = attrs.field(init=False, default=0)
    _last_report: float = attrs.field(init=False, default=0.0)

    def pack(self) -> PackResult:
        """Scan the cell and write the archive; return what was written."""
        self._manifest = Manifest(archive=str(self.ident))
        backed_at = dt.datetime.now(dt.UTC)
        kind = "incremental" if self.parent is not None else "full"
        chain: tuple[ArchiveId, ...] = ()
        if self.parent_meta is not None:
            chain = (*self.parent_meta.chain, self.parent_meta.id)
        roots: dict[str, Path] = {}
        dumps: list[DumpSummary] = []
        for name, path in self.cell.roots.items():
            try:
                os.lstat(path)
            except FileNotFoundError:
                if self.reason == "pre-restore":
                    # The safety backup before a restore keeps what is there: a path
                    # that was lost is what the restore is about to bring back.
                    self._warn(f"{path} does not exist; the safety backup holds the other paths")
                    continue
                raise BackupError(
                    f"cell {self.cell.name}: path {path} does not exist",
                    hint="create it, fix the cell's paths, or remove the cell from BACKUP_CELLS",
                ) from None
            except OSError as exc:
                raise BackupError(
                    f"cell {self.cell.name}: cannot read {path}: {exc.strerror}"
                ) from None
            roots[name] = path
        meta = ArchiveMeta(
            id=self.ident,
            kind=kind,
            backed_at=backed_at,
            host=self.host,
            version=self.version,
            codec=self.codec.name,
            parent=self.parent_meta.id if self.parent_meta else None,
            chain=chain,
            roots={name: str(path) for name, path in roots.items()},
            reason=self.reason,
        )

        final = self.spool / f"{self.ident}{self.codec.suffix}"
        partial = final.with_name(final.name + ".partial")
        clear_stale_spool(self.spool.parent, keep=self.spool)
        for attempt in range(5):
            _claim_spool(self.spool)
            try:
                out = open(partial, "wb")  # noqa: SIM115 - closed by the with below
                break
            except FileNotFoundError:
                # The cells of a run share its folder, and the run removes it when
                # it is empty: another cell may have done so just now. Again.
                if attempt == 4:
                    raise
        try:
            with out as raw:
                hashing = HashingWriter(raw)
                compressor = self.codec.writer(hashing)  # type: ignore[arg-type]
                sink = _Sink(compressor)
                tar = tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT)  # type: ignore[call-overload]  # noqa: SIM115 - closed below, or dropped on failure
                tar.copybufsize = BLOCK
                try:
                    self._add_bytes(tar, "meta.json", meta.to_json(), backed_at)
                    for name, path in roots.items():
                        self._add_tree(tar, path, PurePosixPath("data", name), PurePosixPath())
                    if self.dumpers:
                        dumps = write_dumps(
                            tar,
                            self._manifest,
                            self.dumpers,
                            cell=self.cell,
                            archive=str(self.ident),
                            spool=self.spool,
                            reason=self.reason,
                            chunk=self.dump_chunk,
                            on_progress=self._progress,
                            warn=self._warnings.append,
                        )
                    self._add_bytes(tar, "manifest.json", self._manifest.to_json(), backed_at)
                    tar.close()
                    compressor.close()
                except BaseException:
                    tar.fileobj = None
                    raise
                raw.flush()
                os.fsync(raw.fileno())
        except BaseException:
            # A failed pack leaves nothing in the spool (the run removes its empty folder).
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        os.replace(partial, final)
        manifest_path = self.spool / f"{self.ident}.manifest.json.zst"
        _write_manifest_copy(manifest_path, self._manifest)
        return PackResult(
            meta=meta,
            manifest=self._manifest,
            data_path=final,
            manifest_path=manifest_path,
            size=hashing.count,
            sha256=hashing.hexdigest(),
            files_stored=self._files_stored,
            bytes_stored=self._bytes_stored,
            bytes_total=self._bytes_total,
            warnings=tuple(self._warnings),
            dumps=tuple(dumps),
        )

    # -- the walk --------------------------------------------------------

    def _add_tree(
        self, tar: tarfile.TarFile, path: Path, member: PurePosixPath, rel: PurePosixPath
    ) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._warn(f"{path} vanished during the scan; not in this archive")
            return
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self._add_dir(tar, path, member, rel, st)
        elif stat.S_ISREG(mode):
            self._add_file(tar, path, member, st)
        elif stat.S_ISLNK(mode):
            self._add_symlink(tar, path, member, st)
        else:
            kind = _special_kind(mode)
            self._warn(f"{path} is a {kind}; skipped (only files, directories and links are kept)")

    def _add_dir(
        self,
        tar: tarfile.TarFile,
        path: Path,
        member: PurePosixPath,
        rel: PurePosixPath,
        st: os.stat_result,
    ) -> None:
        entry = Entry(
            path=member.as_posix(),
            type="dir",
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            uid=st.st_uid,
            gid=st.st_gid,
        )
        info = self._tarinfo(entry, tarfile.DIRTYPE)
        tar.addfile(info)
        tar.members.clear()  # type: ignore[attr-defined]
        self._manifest.add(entry)
        try:
            with os.scandir(path) as it:
                names = sorted(e.name for e in it)
        except PermissionError:
            raise BackupError(
                f"cell {self.cell.name}: cannot list {path}: permission denied",
                hint="run the backup as a user that can read the cell's data",
            ) from None
        for name in names:
            child_rel = rel / name
            if self.cell.excludes(child_rel):
                continue
            self._add_tree(tar, path / name, member / name, child_rel)

    def _add_symlink(
        self, tar: tarfile.TarFile, path: Path, member: PurePosixPath, st: os.stat_result
    ) -> None:
        try:
            target = os.readlink(path)
        except FileNotFoundError:
            self._warn(f"{path} vanished during the scan; not in this archive")
            return
        entry = Entry(
            path=member.as_posix(),
            type="symlink",
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            target=target,
            uid=st.st_uid,
            gid=st.st_gid,
        )
        info = self._tarinfo(entry, tarfile.SYMTYPE)
        info.linkname = target
        tar.addfile(info)
        tar.members.clear()  # type: ignore[attr-defined]
        self._manifest.add(entry)

    def _add_file(
        self, tar: tarfile.TarFile, path: Path, member: PurePosixPath, st: os.stat_result
    ) -> None:
        name = member.as_posix()
        self._bytes_total += st.st_size
        prev = self.parent.get(name) if self.parent is not None else None
        if prev is not None and not self.checksum and self._unchanged(prev, st):
            self._manifest.add(attrs.evolve(prev, uid=st.st_uid, gid=st.st_gid))
            return
        try:
            raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below, after tar reads it
        except FileNotFoundError:
            self._warn(f"{path} vanished during the scan; not in this archive")
            self._bytes_total -= st.st_size
            return
        except PermissionError:
            raise BackupError(
                f"cell {self.cell.name}: cannot read {path}: permission denied",
                hint="run the backup as a user that can read the cell's data",
            ) from None
        with raw:
            if (
                self.checksum
                and prev is not None
                and prev.type == "file"
                and prev.size == st.st_size
            ):
                digest = _hash_file(raw)
                if digest == prev.sha256 and stat.S_IMODE(st.st_mode) == prev.mode:
                    self._manifest.add(
                        attrs.evolve(
                            prev,
                            mtime_ns=st.st_mtime_ns,
                            inode=st.st_ino,
                            dev=st.st_dev,
                            ctime_ns=st.st_ctime_ns,
                            uid=st.st_uid,
                            gid=st.st_gid,
                        )
                    )
                    return
                raw.seek(0)
            entry = Entry(
                path=name,
                type="file",
                mode=stat.S_IMODE(st.st_mode),
                mtime_ns=st.st_mtime_ns,
                size=st.st_size,
                uid=st.st_uid,
                gid=st.st_gid,
                inode=st.st_ino,
                dev=st.st_dev,
                ctime_ns=st.st_ctime_ns,
                archive=str(self.ident),
            )
            info = self._tarinfo(entry, tarfile.REGTYPE)
            info.size = st.st_size
            source = _FileSource(raw, st.st_size, self._progress)
            tar.addfile(info, source)
            tar.members.clear()  # type: ignore[attr-defined]
        if source.short:
            self._warn(
                f"{path} shrank while it was read; stored padded with zeros, back it up again"
            )
        self._files_stored += 1
        self._bytes_stored += st.st_size
        self._manifest.add(attrs.evolve(entry, sha256=source.digest.hexdigest()))

    def _unchanged(self, prev: Entry, st: os.stat_result) -> bool:
        if prev.type != "file" or prev.archive is None:
            return False
        same = (
            prev.size == st.st_size
            and prev.mtime_ns == st.st_mtime_ns
            and prev.inode == st.st_ino
            and prev.mode == stat.S_IMODE(st.st_mode)
        )
        if not same:
            return False
        # Racy: modified so close to the parent's scan that a change in the
        # same timestamp tick would not show. Store it again.
        assert self.parent_meta is not None
        scan_ns = (self.parent_meta.backed_at - _EPOCH) // dt.timedelta(microseconds=1) * 1000
        return prev.mtime_ns < scan_ns - RACY_NS

    # -- tar members -----------------------------------------------------

    def _tarinfo(self, entry: Entry, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(entry.path)
        info.type = kind
        info.mode = entry.mode
        info.uid = entry.uid
        info.gid = entry.gid
        info.uname = ""
        info.gname = ""
        # PAX keeps sub-second mtimes; the manifest keeps the exact nanoseconds.
        info.mtime = (
            entry.mtime_ns / 1e9 if entry.mtime_ns % 1_000_000_000 else entry.mtime_ns // 10**9
        )
        return info

    def _add_bytes(self, tar: tarfile.TarFile, name: str, data: bytes, when: dt.datetime) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = 0o644
        info.mtime = int(when.timestamp())
        tar.addfile(info, io.BytesIO(data))
        tar.members.clear()  # type: ignore[attr-defined]

    def _warn(self, message: str) -> None:
        self._warnings.append(message)
        log.warning("pack.skipped", cell=self.cell.name, archive=str(self.ident), detail=message)

    def _progress(self, n: int) -> None:
        self._done += n
        if self.on_progress is None:
            return
        now = time.monotonic()
        if now - self._last_report >= 0.25:
            self._last_report = now
            self.on_progress(self._done, self._files_stored)


def _special_kind(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def _hash_file(raw: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: raw.read(BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


def _write_manifest_copy(path: Path, manifest: Manifest) -> None:
    import zstandard

    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(zstandard.ZstdCompressor(level=3).compress(manifest.to_json()))
        f.flush()
        # Like the archive: a local target may hard-link this very file and commit it.
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- the spool ------------------------------------------------------------------
#
# Each run packs into its own folder of the spool (``<backup_dir>/.cellvault/spool/<run>``).
# A run that is killed leaves its folder behind. To tell such debris from the
# folder of a run still in progress (in this process or another), a run holds a
# shared flock on its folder for as long as the process lives or until the folder
# is removed; the kernel drops it when the process dies, even by SIGKILL. A
# folder nobody holds belongs to a dead run and is deleted by the next pack.

_HELD: dict[Path, int] = {}
_HELD_LOCK = threading.Lock()


def _claim_spool(folder: Path) -> None:
    """Create *folder* (a run's spool folder) and mark it as in use by this process."""
    with _HELD_LOCK:
        for path, fd in list(_HELD.items()):
            if os.fstat(fd).st_nlink == 0:  # the run is over and its folder was removed
                os.close(fd)
                del _HELD[path]
        if folder in _HELD:
            return
        for _ in range(5):
            try:
                folder.mkdir(parents=True, exist_ok=True)
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            except (FileNotFoundError, FileExistsError):
                continue  # removed (by its run or a cleaner) while we made it: again
            try:
                fcntl.flock(fd, fcntl.LOCK_SH)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    os.close(fd)
                    raise
                # No locks on this file system: nothing is ever cleaned as stale here.
            if os.fstat(fd).st_nlink > 0:
                _HELD[folder] = fd
                return
            os.close(fd)
        raise BackupError(f"cannot create the spool folder {folder}; it keeps disappearing")


def clear_stale_spool(spool: Path, keep: Path | None = None) -> list[Path]:
    """Delete the run folders in *spool* that no live run holds (left by killed runs)."""
    removed: list[Path] = []
    try:
        children = list(spool.iterdir())
    except FileNotFoundError:
        return removed
    for child in children:
        if child == keep or child in _HELD:
            continue
        try:
            fd = os.open(child, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue  # not a folder (or gone): not ours to judge
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run holds it, or the file system has no locks
            if os.fstat(fd).st_nlink == 0:
                continue
            shutil.rmtree(child, ignore_errors=True)
            removed.append(child)
            log.info("spool.debris_removed", path=str(child))
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    return removed
