"""Writing an archive: scan a cell, stream its files into a compressed tar.

The archive is written once into a spool directory; targets then store that
file. Memory stays bounded whatever the file sizes and their number: files are
read in 1 MiB blocks, hashed while read, tar bookkeeping is dropped as it goes,
and the manifest is written into a spool file entry by entry
(:class:`~cellvault.manifest.ManifestWriter`), never held.

Files are opened and read a little ahead of the tar writer by a few threads
(:class:`ReadAhead`), so that the disk's latency for one small file overlaps
the compression of the ones before it; small files are read whole, hashed and
closed there, in batches. The bytes read ahead are bounded. In a cell of many
small files, forked readers (:mod:`cellvault.readers`) build those files'
members and entries instead, on the other core.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as _quote
from pathlib import Path
from typing import IO

import attrs

from . import readahead
from .archive import ArchiveId, ArchiveMeta, Kind
from .cell import Cell, existing_roots
from .codec import Codec, HashingWriter
from .crypt import SUFFIX, Recipients, Sealer
from .dumpers.archive_io import write_dumps
from .dumpers.base import Dumper
from .errors import BackupError
from .fsmeta import (
    SPECIAL_TAR_TYPES,
    Xattrs,
    add_sparse,
    data_map,
    encode_xattrs,
    member_header,
    privileged_warning,
    read_xattrs,
    xattr_records,
)
from .log import get_logger
from .manifest import JSON_CHUNK, Entry, InOrder, Manifest, ManifestWriter
from .readahead import (
    Ahead,
    FileSource,
    Handle,
    Made,
    Opened,
    Ran,
    ReadAhead,
)
from .readers import Part, file_entry
from .report import DumpSummary
from .safeopen import SwappedFile, check_same
from .spool import claim_spool, clear_stale_spool, open_spool_file, write_manifest_copy
from .tarwrite import BLOCK, ZEROS, TarWriter, file_header, pax_mtime, tar_header
from .walk import DIR, FILE, HARD, LINK, RUN, SAME, SPECIAL, CellWalk, Item

__all__ = ["PackResult", "Packer"]

log = get_logger(__name__)

#: A file modified this close to (or after) the parent's scan start may have
#: changed without its mtime showing it: git's "racy" case. One second covers
#: file systems with coarse timestamps.
RACY_NS = 1_000_000_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@attrs.frozen
class PackResult:
    """A finished archive in the spool, ready to be stored."""

    meta: ArchiveMeta
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
    #: Paths the manifest lists.
    entries: int = 0
    #: The archives holding the manifest's files (this one, and its chain's for an incremental).
    holders: frozenset[str] = frozenset()
    #: The manifest copy as written (plain, before any sealing), for :attr:`manifest`.
    _plain: Path | None = attrs.field(default=None, kw_only=True)
    _parsed: list[Manifest] = attrs.field(init=False, factory=list, eq=False, repr=False)

    @property
    def manifest(self) -> Manifest:
        """The manifest written, parsed from its copy in the spool on first use.

        The packer writes the manifest as it goes and does not hold it: what a
        backup needs of it is :attr:`entries` and :attr:`holders`. The copy
        must still be in the spool (a run removes it once stored).
        """
        if not self._parsed:
            import zstandard

            path = self._plain or self.manifest_path
            with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f) as text:
                self._parsed.append(Manifest.read(text, archive=str(self.meta.id)))
        return self._parsed[0]


class _Writer(ManifestWriter):
    """The manifest's writer, also taking an entry as its JSON text (a file stored)."""

    def add_json(self, text: str, archive: str) -> None:
        """Add the entry whose :meth:`Entry.to_json` is *text*: a file held by *archive*."""
        chunk = self._chunk
        chunk.append(text)
        self._count += 1
        self._holders.add(archive)
        if len(chunk) >= JSON_CHUNK:
            self._flush()

    def add_texts(self, texts: list[str], archive: str) -> None:
        """:meth:`add_json` of each of *texts*, in order."""
        chunk = self._chunk
        chunk += texts
        self._count += len(texts)
        self._holders.add(archive)
        if len(chunk) >= JSON_CHUNK:
            self._flush()


@attrs.define
class Packer:
    """Build one archive of one cell.

    With a *parent* manifest, the archive is incremental: a file goes in only
    when its size, mtime_ns, mode or extended attributes differ from the
    parent's (not its inode, which a restore changes), or when it was modified
    within :data:`RACY_NS` of the parent's scan; with *checksum*, every file is
    hashed and compared too. Unchanged files are listed with their archive.
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
    #: Called (at most every 0.25 s) with the bytes and regular files done so
    #: far: read and stored, or found unchanged since the parent (their size
    #: counts as done), plus the dumps' bytes.
    on_progress: Callable[[int, int], None] | None = None
    #: Dumpers whose output goes under ``dumps/`` after the files, always fresh.
    dumpers: Sequence[Dumper] = ()
    #: Bytes of a dump held in memory before it is written as a part (default:
    #: :data:`cellvault.dumpers.members.DUMP_CHUNK`).
    dump_chunk: int | None = None
    #: DR fencing: the epoch this site held when the backup started, and its id.
    epoch: int | None = None
    site: str | None = None
    #: Encrypt the archive to these age recipients as it is written (``None``: plain).
    recipients: Recipients | None = None

    _manifest: _Writer = attrs.field(init=False)
    _warnings: list[str] = attrs.field(init=False, factory=list)
    _files_stored: int = attrs.field(init=False, default=0)
    _bytes_stored: int = attrs.field(init=False, default=0)
    _done: int = attrs.field(init=False, default=0)
    #: Regular files done: stored, or found unchanged since the parent.
    _seen: int = attrs.field(init=False, default=0)
    _last_report: float = attrs.field(init=False, default=0.0)
    #: This archive's id, one string shared by the entries of the files it stores.
    _archive: str = attrs.field(init=False, default="")
    #: The same, as JSON text.
    _quoted: str = attrs.field(init=False, default="")
    #: A file modified before this instant (ns) cannot have changed unseen since the parent.
    _racy_before: int | None = attrs.field(init=False, default=None)
    _xattr_warned: bool = attrs.field(init=False, default=False)
    #: The walk of the cell (:mod:`cellvault.walk`), made by :meth:`_add_trees`.
    _scan: CellWalk = attrs.field(init=False)

    def pack(self) -> PackResult:
        """Scan the cell and write the archive; return what was written."""
        self._archive = str(self.ident)
        self._quoted = _quote(self._archive)
        backed_at = dt.datetime.now(dt.UTC)
        roots = self._roots()
        meta = self._meta(backed_at, roots)
        sealed = SUFFIX if self.recipients else ""
        final = self.spool / f"{self.ident}{self.codec.suffix}{sealed}"
        partial = final.with_name(final.name + ".partial")
        clear_stale_spool(self.spool.parent, keep=self.spool)
        out = self._open_partial(partial)
        manifest_json: IO[bytes] | None = None
        sealer: Sealer | None = None
        try:
            with out as raw:
                # The manifest goes through a spool file as entries come, never whole
                # in memory; its compressed copy is made from the same file below.
                manifest_json = tempfile.TemporaryFile(dir=self.spool)  # noqa: SIM115 - closed below
                self._manifest = _Writer(self._archive, manifest_json)
                hashing = HashingWriter(raw)
                # Encrypted as it is written, when recipients are given (cellvault.crypt).
                sealer = Sealer(hashing, self.recipients) if self.recipients else None
                compressor = self.codec.writer(sealer or hashing)  # type: ignore[arg-type]
                tar = TarWriter(compressor)
                tar.add_bytes("meta.json", meta.to_json(), int(backed_at.timestamp()))
                self._add_trees(tar, roots)
                dumps = self._add_dumps(tar)
                self._add_manifest(tar, manifest_json, backed_at)
                tar.close()
                compressor.close()
                if sealer is not None:
                    sealer.close()
                raw.flush()
                os.fsync(raw.fileno())
        except BaseException:
            # A failed pack leaves nothing in the spool (the run removes its empty folder).
            if sealer is not None:
                with contextlib.suppress(OSError):
                    sealer.close()  # the encrypting thread ends with it
            with contextlib.suppress(OSError):
                partial.unlink()
            if manifest_json is not None:
                manifest_json.close()
            raise
        os.replace(partial, final)
        manifest_path = self.spool / f"{self.ident}.manifest.json.zst"
        with manifest_json:
            write_manifest_copy(manifest_path, manifest_json)
        return PackResult(
            meta=meta,
            data_path=final,
            manifest_path=manifest_path,
            size=hashing.count,
            sha256=hashing.hexdigest(),
            files_stored=self._files_stored,
            bytes_stored=self._bytes_stored,
            bytes_total=self._scan.bytes_total,
            warnings=tuple(self._warnings),
            dumps=tuple(dumps),
            entries=len(self._manifest),
            holders=frozenset(self._manifest.holders()),
            plain=manifest_path,
        )

    def _roots(self) -> dict[str, Path]:
        """The cell's paths by archive root name (see :func:`cellvault.cell.existing_roots`)."""
        return existing_roots(self.cell, keep_going=self.reason == "pre-restore", warn=self._warn)

    def _meta(self, backed_at: dt.datetime, roots: dict[str, Path]) -> ArchiveMeta:
        """The archive's ``meta.json``; for an incremental, also when a file is racy."""
        kind: Kind = "incremental" if self.parent is not None else "full"
        chain: tuple[ArchiveId, ...] = ()
        if self.parent_meta is not None:
            chain = (*self.parent_meta.chain, self.parent_meta.id)
            scan_ns = (self.parent_meta.backed_at - _EPOCH) // dt.timedelta(microseconds=1) * 1000
            self._racy_before = scan_ns - RACY_NS
        return ArchiveMeta(
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
            epoch=self.epoch,
            site=self.site if self.epoch is not None else None,
        )

    def _open_partial(self, partial: Path) -> IO[bytes]:
        """Open the archive's file in the run's spool folder, claimed for this run."""
        for attempt in range(5):
            claim_spool(self.spool)
            try:
                return open_spool_file(partial)  # closed by the with in pack()
            except FileNotFoundError:
                # The cells of a run share its folder, and the run removes it when
                # it is empty: another cell may have done so just now. Again.
                if attempt == 4:
                    raise
        raise AssertionError("unreachable")

    def _add_dumps(self, tar: TarWriter) -> list[DumpSummary]:
        """Run the cell's dumpers into the archive, after its files."""
        if not self.dumpers:
            return []
        return write_dumps(
            tar,
            self._manifest,
            self.dumpers,
            cell=self.cell,
            archive=self._archive,
            spool=self.spool,
            reason=self.reason,
            chunk=self.dump_chunk,
            on_progress=self._progress,
            warn=self._warnings.append,
        )

    # -- the trees -------------------------------------------------------
    #
    # The walk (cellvault.walk) yields items in archive order; ReadAhead opens
    # and reads the files among them on its threads (or forked readers build
    # them), ahead of the writer; _add_trees writes the members in that order.

    def _add_trees(self, tar: TarWriter, roots: dict[str, Path]) -> None:
        # Forked readers build the members of small files, unless each file's
        # hash is to be compared with the parent's here (checksum).
        ahead = ReadAhead(fork_for=None if self.checksum else self._archive)
        full = self.parent is None and not self.checksum
        self._scan = CellWalk(
            self.cell,
            self._warn,
            self._xattrs,
            parent_get=InOrder(self.parent).get if self.parent is not None else None,
            checksum=self.checksum,
            racy_before=self._racy_before,
            # A full backup: past FORK_MIN_FILES paths, the walk hands runs of
            # regular files to the readers unstat-ed (their fstat is the scan).
            start_readers=ahead.start_readers if full else None,
        )
        try:
            for item, future in ahead.items(self._scan.items(roots)):
                self._add_item(tar, item, future)
        finally:
            ahead.close()

    def _add_item(self, tar: TarWriter, item: Item, future: Ahead | None) -> None:
        kind = item[0]
        if kind == RUN:
            assert isinstance(future, Ran)
            self._add_run(tar, item, future.result())
        elif kind == SAME:
            self._manifest.add(item[4])
            self._seen += 1
            self._progress(item[3].st_size)
        elif kind == FILE:
            assert future is not None
            if isinstance(future, Made):
                built = future.result()
                if built is not None:
                    self._add_built(tar, built[0], [built[1]], built[2], counted=True)
                    return
                # Not plain, or it failed there: opened here, warned here.
                future = readahead.opened_now(item[1], item[3].st_size)
            assert not isinstance(future, Ran)
            self._add_file(tar, item, future)
        elif kind == DIR:
            self._add_dir(tar, item[2], item[3], item[1])
        elif kind == LINK:
            self._add_symlink(tar, item)
        elif kind == HARD:
            self._add_hardlink(tar, item)
        elif kind == SPECIAL:
            self._add_special(tar, item)
        else:
            self._warn(item[4])

    def _add_run(self, tar: TarWriter, item: Item, parts: list[Part]) -> None:
        """A run of regular files of one folder (:data:`cellvault.walk.RUN`), mostly built by a reader."""
        _, base, mbase, _, _ = item
        for part in parts:
            if isinstance(part, str):
                # Not plain (a hard link, larger, sparse, attributes) or gone: seen here.
                self._add_alone(tar, base + part, mbase + part)
            else:
                members, entries, size = part
                self._add_built(tar, members, entries, size, counted=False)

    def _add_alone(self, tar: TarWriter, path: str, member: str) -> None:
        """A file of a run the reader left: ``lstat``-ed, then packed as the walk would have."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._warn(f"{path} vanished during the scan; not in this archive")
            return
        if stat.S_ISDIR(st.st_mode):
            self._warn(f"{path} became a directory after the scan; skipped, not in this archive")
            return
        item = self._scan.item(path, member, st)
        future = readahead.opened_now(path, st.st_size) if item[0] == FILE else None
        self._add_item(tar, item, future)

    def _add_built(
        self, tar: TarWriter, members: bytes, entries: list[str], size: int, *, counted: bool
    ) -> None:
        """Files' members and entries built by a forked reader (:mod:`cellvault.readers`).

        *counted*: their sizes are in the cell's total already (the walk
        ``stat``-ed them); a run's were not.
        """
        tar.write(members)
        self._progress(size)
        self._files_stored += len(entries)
        self._seen += len(entries)
        self._bytes_stored += size
        if not counted:
            self._scan.bytes_total += size
        self._manifest.add_texts(entries, self._archive)

    def _add_dir(self, tar: TarWriter, member: str, st: os.stat_result, path: str) -> None:
        self._add_other(tar, (DIR, path, member, st, None), "dir", tarfile.DIRTYPE)

    def _add_symlink(self, tar: TarWriter, item: Item) -> None:
        self._add_other(tar, item, "symlink", tarfile.SYMTYPE, target=item[4])

    def _add_hardlink(self, tar: TarWriter, item: Item) -> None:
        # No attributes of its own: they are the first name's (one inode).
        self._add_other(tar, item, "hardlink", tarfile.LNKTYPE, target=item[4], xattrs=False)

    def _add_special(self, tar: TarWriter, item: Item) -> None:
        rdev = item[3].st_rdev if item[4] != "fifo" else None
        self._add_other(tar, item, item[4], SPECIAL_TAR_TYPES[item[4]], rdev=rdev)

    def _add_other(
        self,
        tar: TarWriter,
        item: Item,
        type_: str,
        kind: bytes,
        *,
        target: str | None = None,
        rdev: int | None = None,
        xattrs: bool = True,
    ) -> None:
        """A member without data (directory, link, FIFO, device) and its entry."""
        _, path, member, st, _ = item
        found = self._xattrs(path) if xattrs else ()
        entry = Entry(
            path=member,
            type=type_,
            mode=stat.S_IMODE(st.st_mode),
            mtime_ns=st.st_mtime_ns,
            target=target,
            uid=st.st_uid,
            gid=st.st_gid,
            rdev=rdev or 0,
            xattrs=encode_xattrs(found),
        )
        tar.write(member_header(entry, kind, found, rdev))
        self._manifest.add(entry)

    def _xattrs(self, path: str, read: Xattrs | OSError | None = None) -> Xattrs:
        """*path*'s extended attributes (or what a read-ahead thread read), warned about."""
        if read is None:
            try:
                read = read_xattrs(path)
            except OSError as exc:
                read = exc
        if isinstance(read, OSError):
            self._warn(f"cannot read the extended attributes of {path} ({read.strerror}); not kept")
            return ()
        found = read
        if found and not self._xattr_warned and (warning := privileged_warning(path, found)):
            self._xattr_warned = True
            self._warn(warning)
        return found

    def _opened(self, path: str, st: os.stat_result, future: Handle) -> Opened | None:
        """The file the scan saw, opened; ``None`` (with a warning) when it is gone or swapped."""
        try:
            opened = future.result()
        except FileNotFoundError:
            self._warn(f"{path} vanished during the scan; not in this archive")
            self._scan.bytes_total -= st.st_size
            return None
        except SwappedFile as exc:
            self._warn(f"{path} {exc.strerror}; skipped, not in this archive")
            self._scan.bytes_total -= st.st_size
            return None
        except PermissionError:
            raise BackupError(
                f"cell {self.cell.name}: cannot read {path}: permission denied",
                hint="run the backup as a user that can read the cell's data",
            ) from None
        try:
            check_same(path, st, opened.st)
        except SwappedFile as exc:
            if opened.source is not None:
                opened.source.raw.close()
            self._warn(f"{path} {exc.strerror}; skipped, not in this archive")
            self._scan.bytes_total -= st.st_size
            return None
        return opened

    def _add_file(self, tar: TarWriter, item: Item, future: Handle) -> None:
        _, path, name, st, prev = item
        size = st.st_size
        opened = self._opened(path, st, future)
        if opened is None:
            return
        source, head = opened.source, opened.head
        if source is None:
            self._add_whole(tar, item, opened)
            return
        raw = source.raw
        mode = stat.S_IMODE(st.st_mode)
        try:
            if self.checksum and prev is not None and prev.type == "file" and prev.size == size:
                if self._same_content(source, prev, st, path):
                    return
                raw.seek(0)  # hashed to its end: read again from the start to store it
                source = FileSource(raw, size)
                head = b""
            found = self._xattrs(path)
            regions = None
            if size and st.st_blocks * 512 < size:
                regions = data_map(raw.fileno(), size)
            if regions is not None:
                source.short = add_sparse(
                    tar, name, st, raw.fileno(), source.digest, regions, found
                )
                source.remaining = 0
                head = b""
                self._progress(size)
            else:
                head_of = (name, tarfile.REGTYPE, mode, st.st_uid, st.st_gid, size)
                mtime = pax_mtime(st.st_mtime_ns)
                tar.write(tar_header(*head_of, mtime, extra=xattr_records(found)))
            if head:
                tar.write(head)
                self._progress(len(head))
            if source.remaining:
                self._copy_rest(tar, source, size)
            tar.pad()
        finally:
            raw.close()
        self._stored(
            path, name, st, mode, source.digest.hexdigest(), encode_xattrs(found), source.short
        )

    def _add_whole(self, tar: TarWriter, item: Item, opened: Opened) -> None:
        """A small file the read-ahead thread read whole, hashed and closed."""
        _, path, name, st, prev = item
        size = st.st_size
        mode = stat.S_IMODE(st.st_mode)
        digest = opened.sha256
        # () for most files: nothing to check or encode.
        found = self._xattrs(path, opened.xattrs) if opened.xattrs else ()
        encoded = encode_xattrs(found) if found else ()
        if (
            self.checksum
            and prev is not None
            and prev.type == "file"
            and (size, digest, mode, encoded) == (prev.size, prev.sha256, prev.mode, prev.xattrs)
        ):
            self._listed_unchanged(prev, st)
            return
        if found:
            header = tar_header(
                name,
                tarfile.REGTYPE,
                mode,
                st.st_uid,
                st.st_gid,
                size,
                pax_mtime(st.st_mtime_ns),
                extra=xattr_records(found),
            )
        else:
            header = file_header(name, mode, st.st_uid, st.st_gid, size, st.st_mtime_ns)
        # One write for the member: header, bytes and padding.
        tar.write(header + opened.head + ZEROS[: -size % 512])
        self._progress(size)
        self._stored(path, name, st, mode, digest, encoded, opened.short)

    def _stored(
        self,
        path: str,
        name: str,
        st: os.stat_result,
        mode: int,
        sha256: str,
        xattrs: tuple[tuple[str, str], ...],
        short: bool,
    ) -> None:
        """Count a file member just written (its size is the scan's) and list it in the manifest."""
        if short:
            self._warn(
                f"{path} shrank while it was read; stored padded with zeros, back it up again"
            )
        self._files_stored += 1
        self._seen += 1
        self._bytes_stored += st.st_size
        self._manifest.add_json(
            file_entry(
                name,
                mode,
                st.st_mtime_ns,
                st.st_uid,
                st.st_gid,
                st.st_size,
                sha256,
                self._quoted,
                st.st_ino,
                st.st_dev,
                st.st_ctime_ns,
                xattrs,
            ),
            self._archive,
        )

    def _same_content(self, source: FileSource, prev: Entry, st: os.stat_result, path: str) -> bool:
        """With *checksum*: list the file as unchanged if its bytes hash as the parent's did."""
        digest = source.digest
        if source.remaining:
            # A large file: hash the rest (to its end, as it is now), then
            # read it again from the start if it is to be stored.
            raw = source.raw
            for block in iter(lambda: raw.read(BLOCK), b""):
                digest.update(block)
        now = (digest.hexdigest(), stat.S_IMODE(st.st_mode), encode_xattrs(self._xattrs(path)))
        if now != (prev.sha256, prev.mode, prev.xattrs):
            return False
        self._listed_unchanged(prev, st)
        return True

    def _listed_unchanged(self, prev: Entry, st: os.stat_result) -> None:
        """With *checksum*: list a file whose bytes hash as the parent's did, as unchanged."""
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

    def _copy_rest(self, tar: TarWriter, source: FileSource, size: int) -> None:
        """Copy a large file's remaining bytes, keeping the kernel reading ahead of us."""
        source.progress = self._progress
        fd = source.raw.fileno()
        pos = size - source.remaining
        advised = readahead.READ_WINDOW  # the read-ahead thread asked for the first window
        while source.remaining:
            if pos + readahead.READ_WINDOW // 2 > advised:
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, advised, readahead.READ_WINDOW, os.POSIX_FADV_WILLNEED)
                advised += readahead.READ_WINDOW
            block = source.read(BLOCK)
            tar.write(block)
            pos += len(block)

    # -- tar members -----------------------------------------------------

    def _add_manifest(self, tar: TarWriter, spool: IO[bytes], when: dt.datetime) -> None:
        size = self._manifest.close()
        spool.seek(0)
        if not tar.add_stream("manifest.json", spool, size, int(when.timestamp())):
            raise BackupError(f"the manifest's spool file in {self.spool} was cut short")

    def _warn(self, message: str) -> None:
        self._warnings.append(message)
        log.warning("pack.skipped", cell=self.cell.name, archive=self._archive, detail=message)

    def _progress(self, n: int) -> None:
        self._done += n
        if self.on_progress is None:
            return
        now = time.monotonic()
        if now - self._last_report >= 0.25:
            self._last_report = now
            self.on_progress(self._done, self._seen)
