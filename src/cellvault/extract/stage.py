"""Extracting a cell's tree from its archives into a staging directory, safely.

Links are data: symbolic links are restored verbatim, wherever they point.
Safety comes from how the tree is written, never through a link:

* every path is created relative to a directory file descriptor, and every
  directory on the way is opened with ``O_NOFOLLOW | O_DIRECTORY`` from the
  staging root down (:class:`DirFds`; a whole path at once with
  ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` where the kernel has it),
  so a directory replaced by a link while the tree is built makes the restore
  fail instead of writing through it;
* files are created with ``O_EXCL | O_NOFOLLOW``;
* hard links, FIFOs and devices come after every file, and symbolic links
  last of all (GNU tar's delayed links), so no member is ever written through
  a link member of the archive;
* hostile manifests are refused before anything is written: absolute or
  ``..`` names, a path below a link or a file, a hard link to anything but a
  file of the same archive.

Each file is checked against the manifest as it is written. An archive of
many files has its small files created by forked writers that check them
and write them the same way (:mod:`cellvault.extract.writer`), while this
process reads the next ones.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from ..errors import ArchiveCorrupt, UnsafeArchive
from ..forking import write_all
from ..fsmeta import decode_xattrs, set_xattrs
from ..log import get_logger
from ..manifest import SPECIAL_TYPES, Entry, Manifest, Row, RowsInOrder
from .dirfds import DirFds
from .names import checked_name
from .stream import ArchiveStream, MemberData, hash_zeros, sparse_regions
from .tarread import BLOCK
from .writer import FileWriter

__all__ = ["DirFds", "StagedTree"]

log = get_logger(__name__)

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: Files up to this size are read whole and written in one call.
_SMALL = 256 << 10
#: An archive holding at least this many files of the tree has its small files
#: created by forked children (:class:`~cellvault.extract.writer.FileWriter`)
#: while this process reads and checks the next ones.
WRITER_MIN_FILES = 1000
_sha256 = hashlib.sha256
_DEV_MODES = {"chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK}
_DIFFERS = "content does not match the manifest (sha256 differs)"
#: Paths other than files a staging tree notes for its end (folders, links,
#: nodes); past this many, its end reads the manifest through for them instead.
OTHERS_KEPT = 65_536
#: Paths above checked ones kept as fine (then forgotten, and looked up again).
_FINE_KEPT = 4_096
#: Marks a destination below a dumps folder that is not inside the staging tree
#: (a NUL: no member name holds one).
_OUTSIDE = "\0"


def _creation_umask(root: int) -> int | None:
    """The mask the kernel applies to the modes of files made below *root*, if it is known.

    The process's umask (from /proc: reading it with ``os.umask`` would change
    it for a moment for every thread), unless *root* has a default ACL (which
    replaces the umask for what is made below it).
    """
    try:
        os.getxattr(root, "system.posix_acl_default")
    except OSError as exc:
        if exc.errno not in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
    else:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _creation_owner(root: int) -> tuple[int, int] | None:
    """The user and group of the files made below *root*, if that is known.

    They are this process's (effective) user and group, unless *root* is
    set-group-ID (its group is handed down, and the set-group-ID bit to the
    directories made below it).
    """
    if os.fstat(root).st_mode & stat.S_ISGID:
        return None
    return os.geteuid(), os.getegid()


def _checked_bytes(data: MemberData, entry: Entry | Row, stream: ArchiveStream) -> bytes:
    """A small file's bytes, read whole and checked against its manifest entry."""
    block = data.readall()
    if len(block) != entry.size or _sha256(block).hexdigest() != entry.sha256:
        raise stream.corrupt(_DIFFERS, member=data.name)
    return block


def _split(rel: str) -> tuple[str, str]:
    parent, _, base = rel.rpartition("/")
    return parent, base


@attrs.define
class StagedTree:
    """Build a cell's tree from its manifest and archives, in a staging directory.

    *staging* receives ``<root name>/...`` for each ``data/<root name>`` of the
    manifest. With *dumps* (a folder, inside *staging* or not), the ``dumps/`` tree
    (database dumps) is extracted and checked there too (``dumps/<dumper>/...``
    lands in ``<dumps>/<dumper>/...``); without, it is skipped. Call
    :meth:`prepare`, then :meth:`take` once per archive of the chain (any
    order), then :meth:`finish`.

    Each file gets its owner, mode, extended attributes and times as soon as
    its data is written; :meth:`finish` creates the hard links, FIFOs and
    devices, then the symbolic links, then sets the directories.
    *allow_external_links* is accepted and ignored: links are always restored
    as they were (see the module's docstring for why that is safe).
    """

    staging: Path
    manifest: Manifest
    archive: str
    allow_external_links: bool = False
    on_bytes: Callable[[int], None] | None = None
    dumps: Path | None = None
    #: A partial restore (*manifest* holds only the chosen paths): each archive is
    #: read only up to the last member it holds for them, and its own manifest,
    #: at the end of the stream, is not compared.
    partial: bool = False
    #: Files still to write, counted by the archive that holds them.
    _left: dict[str, int] = attrs.field(init=False, factory=dict)
    _dirs: DirFds | None = attrs.field(init=False, default=None)
    #: Where dumps go, relative to *staging* (``None``: dumps are not wanted).
    _dumps_rel: str | None = attrs.field(init=False, default=None)
    #: The dumps folder's own descriptors when it is not inside *staging*.
    _dump_dirs: DirFds | None = attrs.field(init=False, default=None)
    files: int = attrs.field(init=False, default=0)
    bytes: int = attrs.field(init=False, default=0)
    #: What could not be restored as it was: one line for the whole tree, or none.
    warnings: list[str] = attrs.field(init=False, factory=list)
    _refused: dict[str, tuple[int, str]] = attrs.field(init=False, factory=dict)
    #: The umask files are made with in the staging tree; ``None`` when it cannot be
    #: relied on (a default ACL above, or no /proc): every file is then chmod'ed.
    _umask: int | None = attrs.field(init=False, default=None)
    #: The user and group that files made in the staging tree get, when it is known
    #: (``None``: a set-group-ID staging directory; every file is then chowned as root).
    _owner: tuple[int, int] | None = attrs.field(init=False, default=None)
    #: The paths that are not files, in manifest order, noted by :meth:`prepare` for
    #: :meth:`finish` (``None``: more than :data:`OTHERS_KEPT`; finish reads them all).
    _others: list[str] | None = attrs.field(init=False, factory=list)
    #: Paths found to be folders (or absent) above others checked (see _check_above).
    _fine_above: set[str] = attrs.field(init=False, factory=set)

    def _dest(self, path: str) -> str | None:
        """Where a manifest path goes, relative to *staging*; ``None`` for an unwanted dump."""
        norm = checked_name(path, self.archive)
        top, slash, rest = norm.partition("/")
        if top == "dumps":
            if self._dumps_rel is None:
                return None
            if self._dumps_rel == _OUTSIDE:  # below the dumps folder's own root
                return _OUTSIDE + rest
            return f"{self._dumps_rel}/{rest}" if rest else self._dumps_rel
        if top != "data" or not slash:
            raise UnsafeArchive(
                "manifest path lies outside data/", archive=self.archive, member=path
            )
        return rest

    def _at(self, dest: str) -> tuple[DirFds, str]:
        """The tree a destination of :meth:`_dest` lies in, and its path there."""
        if dest.startswith(_OUTSIDE):
            if self._dump_dirs is None:
                assert self.dumps is not None
                self.dumps.mkdir(parents=True, exist_ok=True)
                self._dump_dirs = DirFds(os.fspath(self.dumps), self.archive)
            return self._dump_dirs, dest[1:]
        return self._tree(), dest

    def _tree(self) -> DirFds:
        if self._dirs is None:
            self.staging.mkdir(parents=True, exist_ok=True)
            self._dirs = DirFds(os.fspath(self.staging), self.archive)
        return self._dirs

    def prepare(self) -> None:
        """Check every manifest path and create the directories."""
        if self.dumps is not None:
            rel = os.path.relpath(self.dumps, self.staging)
            self._dumps_rel = _OUTSIDE if rel.startswith("..") or rel == "." else rel
        try:
            self._prepare()
            self._umask = _creation_umask(self._tree().root)
            self._owner = _creation_owner(self._tree().root)
        except BaseException:
            self.close()
            raise

    def _prepare(self) -> None:
        dumps_name = self._dumps_rel if self._dumps_rel and "/" not in self._dumps_rel else None
        left = self._left
        checked = None  # the parent of the last entry: its ancestors are all directories
        get = self.manifest.get
        others: list[str] | None = []
        self._others = others
        for path, kind, holder in self.manifest.brief():
            dest = self._dest(path)
            if dest is None:
                continue
            parts = path.split("/")
            if parts[0] == "dumps" and kind not in ("file", "dir"):
                raise UnsafeArchive(
                    f"a {kind} under dumps/; refused", archive=self.archive, member=path
                )
            if parts[0] == "data" and len(parts) == 2 and parts[1] == dumps_name:
                raise UnsafeArchive(
                    "a cell path has the name of the dumps folder; refused",
                    archive=self.archive,
                    member=path,
                )
            parent = path.rpartition("/")[0]
            if parent != checked:
                self._check_above(parts, path)
                checked = parent
            if kind == "hardlink":
                entry = get(path)
                assert entry is not None
                self._check_hardlink(entry)
            elif kind == "dir":
                tree, rel = self._at(dest)
                tree.fd(rel)
            elif kind == "file":
                left[holder or ""] = left.get(holder or "", 0) + 1
                continue
            if others is not None:
                others.append(path)
                if len(others) > OTHERS_KEPT:
                    others = self._others = None

    def _check_above(self, parts: list[str], path: str) -> None:
        """Refuse *path* if a path above it is listed as anything but a directory.

        The paths above found fine are kept (a few thousand: siblings share
        them), so that each is looked up once, not once per folder below it.
        """
        get = self.manifest.get
        fine = self._fine_above
        for depth in range(1, len(parts)):
            above_path = "/".join(parts[:depth])
            if above_path in fine:
                continue
            above = get(above_path)
            if above is not None and above.type != "dir":
                self._refuse_under(parts, path)
            if len(fine) >= _FINE_KEPT:
                fine.clear()
            fine.add(above_path)

    def _check_hardlink(self, entry: Entry) -> None:
        first = self.manifest.get(entry.target or "")
        if first is None or first.type != "file" or not first.path.startswith("data/"):
            raise UnsafeArchive(
                f"hard link to {entry.target!r}, which is not a file of this archive; refused",
                archive=self.archive,
                member=entry.path,
            )

    def _refuse_under(self, parts: list[str], path: str) -> None:
        # Name the outermost file or link the path lies under.
        for depth in range(1, len(parts)):
            above = self.manifest.get("/".join(parts[:depth]))
            if above is not None and above.type != "dir":
                kind = "symbolic link" if above.type == "symlink" else above.type
                raise UnsafeArchive(
                    f"path lies under the {kind} {above.path}; refused",
                    archive=self.archive,
                    member=path,
                )

    def holders(self) -> set[str]:
        """The archives that still have to be read."""
        return {holder for holder, n in self._left.items() if n and holder}

    def close(self) -> None:
        """Close the directory descriptors (:meth:`finish` does; call it after a failure)."""
        if self._dirs is not None:
            dirs, self._dirs = self._dirs, None
            dirs.close()
        if self._dump_dirs is not None:
            dirs, self._dump_dirs = self._dump_dirs, None
            dirs.close()

    def take(self, stream: ArchiveStream) -> None:
        """Extract from *stream* the files the manifest says it holds, checking each."""
        try:
            self._take(stream, os.geteuid() == 0)
        except BaseException:
            self.close()
            raise
        finally:
            stream.close()
        # The selected archive's own manifest must be the one we planned with.
        if (
            not self.partial
            and stream.archive == self.archive
            and (stream.manifest_raw is None or not self._same_manifest(stream))
        ):
            raise stream.corrupt(
                "manifest.json differs from the stored manifest copy", member="manifest.json"
            )

    def _same_manifest(self, stream: ArchiveStream) -> bool:
        """Whether the archive's own ``manifest.json`` is the manifest planned with."""
        if self.manifest.digest is not None and stream.manifest_sha256 == self.manifest.digest:
            return True  # the very same bytes (the copy is made from the archive's spool)
        return stream.manifest().same_as(self.manifest)

    def _take(self, stream: ArchiveStream, as_root: bool) -> None:
        holder = stream.archive
        left = self._left.get(holder, 0)
        if self.partial and not left:
            return
        main = self._tree()
        writer = (
            FileWriter.start(
                main.root,
                self.archive,
                lambda root: DirFds(root, self.archive),
                lambda member: stream.corrupt(_DIFFERS, member=member),
            )
            if left >= WRITER_MIN_FILES
            else None
        )
        try:
            self._take_members(stream, holder, left, main, writer, as_root)
            if writer is not None:
                writer.close()
        finally:
            if writer is not None:
                writer.abort()

    def _take_members(
        self,
        stream: ArchiveStream,
        holder: str,
        left: int,
        main: DirFds,
        writer: FileWriter | None,
        as_root: bool,
    ) -> None:
        get = RowsInOrder(self.manifest).get
        umask = self._umask
        # Files made here belong to this process's user and group already (no
        # set-group-ID directory above hands down another group): as root, the
        # chown is only made for entries that belong to someone else.
        owner = self._owner
        files = size_sum = 0
        for member, name, data in stream.members(once=False):
            if data is None:
                continue
            entry = get(name)
            if entry is None or entry.type != "file" or entry.archive != holder:
                continue
            # The stream checked the name (checked_name) already.
            top, _, rest = name.partition("/")
            if top == "data":
                tree, rel = main, rest
            else:
                dest = self._dest(name)
                if dest is None:
                    continue  # a dump, not wanted
                tree, rel = self._at(dest)
            realsize = member.realsize
            if realsize is not None and realsize != entry.size:
                raise stream.corrupt(
                    f"sparse file of {realsize} bytes, the manifest says {entry.size}",
                    member=name,
                )
            parent, _, base = rel.rpartition("/")
            # Made with its own permission bits when they are what it gets (then
            # no chmod): inside the staging tree, which only this user can enter.
            mode = entry.mode
            created = mode & 0o777 if umask is not None and not entry.xattrs else 0o600
            unmasked = umask is not None and created & ~umask == mode
            chown = as_root and (
                tree is not main or owner is None or owner != (entry.uid, entry.gid)
            )
            if (
                writer is not None
                and tree is main
                and realsize is None
                and not entry.xattrs
                and data.reader.left <= _SMALL
            ):
                # Read and checked here; created, with its attributes, by the writer.
                where = (parent, base, created, -1 if unmasked else mode)
                size = self._hand_over(writer, data, entry, stream, where, chown)
            else:
                try:
                    fd = os.open(base, _CREATE, created, dir_fd=tree.fd(parent))
                except FileExistsError:
                    # Written already: the member appears twice (the stream tells a
                    # repeat a little later when the names it has seen are many).
                    raise UnsafeArchive(
                        "member appears twice; refused", archive=self.archive, member=name
                    ) from None
                try:
                    size = self._write(fd, data, entry, stream, realsize)
                    self._attributes(fd, entry, chown, chmod=not unmasked)
                finally:
                    os.close(fd)
            files += 1
            size_sum += size
            left -= 1
            if self.partial and not left:
                break  # the rest of the stream holds nothing wanted
        self._left[holder] = left
        self.files += files
        self.bytes += size_sum

    def _write(
        self,
        fd: int,
        data: MemberData,
        entry: Entry | Row,
        stream: ArchiveStream,
        realsize: int | None,
    ) -> int:
        if realsize is None and data.reader.left <= _SMALL:
            # A small file: read whole, checked, then written in one call.
            block = _checked_bytes(data, entry, stream)
            size = len(block)
            write_all(fd, block)
            if self.on_bytes is not None and size:
                self.on_bytes(size)
            return size
        digest = hashlib.sha256()
        size = 0
        if realsize is not None:
            # Sparse: each region at its offset; the holes are left unwritten.
            for offset, block in sparse_regions(data, realsize):
                hash_zeros(digest, offset - size)
                os.pwrite(fd, block, offset)
                digest.update(block)
                size = offset + len(block)
                if self.on_bytes is not None:
                    self.on_bytes(len(block))
            hash_zeros(digest, realsize - size)
            size = realsize
            os.ftruncate(fd, size)
        else:
            while block := data.read(BLOCK):
                digest.update(block)
                write_all(fd, block)
                size += len(block)
                if self.on_bytes is not None:
                    self.on_bytes(len(block))
        if size != entry.size or digest.hexdigest() != entry.sha256:
            raise stream.corrupt(_DIFFERS, member=data.name)
        return size

    def _hand_over(
        self,
        writer: FileWriter,
        data: MemberData,
        entry: Entry | Row,
        stream: ArchiveStream,
        where: tuple[str, str, int, int],
        chown: bool,
    ) -> int:
        """A small file read here, for *writer* to check and create at *where*.

        *where*: its folder and name in the staging tree, the mode it is
        created with, and the mode set after (-1: none, it is what it was
        created with once masked). Its size is checked here, its sha256 by
        the writer.
        """
        block = data.readall()
        if len(block) != entry.size or entry.sha256 is None:
            raise stream.corrupt(_DIFFERS, member=data.name)
        parent, base, created, chmod = where
        writer.add(
            (
                parent,
                base,
                created,
                block,
                chmod,
                entry.uid if chown else -1,
                entry.gid,
                entry.mtime_ns,
                entry.sha256,
            )
        )
        if self.on_bytes is not None and block:
            self.on_bytes(len(block))
        return len(block)

    def _attributes(self, fd: int, entry: Entry | Row, chown: bool, *, chmod: bool = True) -> None:
        """Owner, mode, extended attributes and times through an open file or directory.

        *chown*: set the owner (as root, unless the file has it already).
        Without *chmod*, the file was made with its mode already (and has no
        extended attributes); a set-ID bit (which chown clears) makes *chmod*
        true anyway, as the file could not be made with it.
        """
        if chown:
            with contextlib.suppress(OSError):
                os.fchown(fd, entry.uid, entry.gid)
        # After chown, which clears file capabilities; before chmod, as an owner
        # who is not root may not set user.* attributes on a read-only file.
        if entry.xattrs:
            self._note_refused(entry, set_xattrs(fd, decode_xattrs(entry.xattrs)))
        # After chown, which clears the set-user-ID and set-group-ID bits; the
        # data is written already. (It keeps an ACL: its bits are the ACL's.)
        if chmod:
            os.fchmod(fd, entry.mode)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))

    def _note_refused(self, entry: Entry | Row, names: list[str]) -> None:
        for name in names:
            count, first = self._refused.get(name, (0, entry.path))
            self._refused[name] = (count + 1, first)

    def finish(self) -> None:
        """Create hard links, FIFOs and devices, then symbolic links, then set the directories."""
        if any(self._left.values()):
            self._missing()
        as_root = os.geteuid() == 0
        dirs = self._tree()
        try:
            # One pass makes the hard links, FIFOs and devices and notes the
            # directories; the symbolic links, last, take a second one if any.
            tree: list[tuple[int, str, str]] = []
            symlinks = False
            for entry, dest in self._wanted("hardlink", "dir", "symlink", *SPECIAL_TYPES):
                if entry.type == "dir":
                    tree.append((dest.count("/"), dest, entry.path))
                elif entry.type == "symlink":
                    symlinks = True
                else:
                    self._make_other(dirs, entry, dest, as_root)
            if symlinks:
                for entry, dest in self._wanted("symlink"):
                    self._make_symlink(dirs, entry, dest, as_root)
            # Deepest first: a directory's times change as its children are made.
            tree.sort(key=lambda d: d[0], reverse=True)
            for _, dest, path in tree:
                found = self.manifest.get(path)
                assert found is not None
                tree_at, rel = self._at(dest)
                fd = tree_at.open(rel)
                try:
                    self._attributes(fd, found, as_root)
                finally:
                    os.close(fd)
        finally:
            self.close()
        self._summarise()

    def _wanted(self, *types: str) -> Iterator[tuple[Entry, str]]:
        """The manifest's entries of *types* to restore, with where each goes.

        The entries that are not files are looked up from the paths
        :meth:`prepare` noted, when it kept them all (a manifest of millions of
        files is not read through for its few thousand folders).
        """
        others = self._others
        if others is not None and "file" not in types:
            get = self.manifest.get
            for path in others:
                found = get(path)
                if found is not None and found.type in types:
                    dest = self._dest(path)
                    if dest is not None:
                        yield found, dest
            return
        for entry in self.manifest.select(*types):
            dest = self._dest(entry.path)
            if dest is not None:
                yield entry, dest

    def _missing(self) -> None:
        """Raise naming the files no archive held (those :meth:`take` did not write)."""
        missing: list[Entry] = []
        for entry, dest in self._wanted("file"):
            tree, rel = self._at(dest)
            parent, base = _split(rel)
            try:
                os.stat(base, dir_fd=tree.fd(parent, create=False), follow_symlinks=False)
            except FileNotFoundError:
                missing.append(entry)
        self.close()
        first = min(missing, key=lambda e: e.path) if missing else None
        raise ArchiveCorrupt(
            f"{len(missing) or sum(self._left.values())} file(s) were not found in the "
            "archives that should hold them",
            archive=(first.archive if first else None) or self.archive,
            member=first.path if first else None,
        )

    def _make_other(self, dirs: DirFds, entry: Entry, dest: str, as_root: bool) -> None:
        """A hard link, FIFO or device node, with its attributes."""
        parent, base = _split(dest)
        at = dirs.fd(parent)
        if entry.type == "hardlink":
            first = self._dest(entry.target or "")
            assert first is not None
            src_parent, src_base = _split(first)
            src = dirs.open(src_parent)
            try:
                os.link(src_base, base, src_dir_fd=src, dst_dir_fd=at, follow_symlinks=False)
            finally:
                os.close(src)
            return  # one inode: its attributes are the first name's
        try:
            if entry.type == "fifo":
                os.mkfifo(base, 0o600, dir_fd=at)
            else:
                os.mknod(base, 0o600 | _DEV_MODES[entry.type], entry.rdev, dir_fd=at)
        except PermissionError:
            self._note_refused(entry, [f"({entry.type} node: only root can make it)"])
            return
        if as_root:
            with contextlib.suppress(OSError):
                os.chown(base, entry.uid, entry.gid, dir_fd=at, follow_symlinks=False)
        if entry.xattrs:
            names = set_xattrs(base, decode_xattrs(entry.xattrs), dir_fd=at)
            self._note_refused(entry, names)
        # No link exists in the tree yet: the name is the node just made.
        os.chmod(base, entry.mode, dir_fd=at)
        os.utime(base, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=at, follow_symlinks=False)

    def _make_symlink(self, dirs: DirFds, entry: Entry, dest: str, as_root: bool) -> None:
        assert entry.target is not None
        parent, base = _split(dest)
        at = dirs.fd(parent)
        os.symlink(entry.target, base, dir_fd=at)
        if as_root:
            with contextlib.suppress(OSError):
                os.chown(base, entry.uid, entry.gid, dir_fd=at, follow_symlinks=False)
        if entry.xattrs:
            names = set_xattrs(base, decode_xattrs(entry.xattrs), dir_fd=at)
            self._note_refused(entry, names)
        os.utime(base, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=at, follow_symlinks=False)

    def _summarise(self) -> None:
        """One warning for all this process could not restore (attributes, device nodes)."""
        if not self._refused:
            return
        paths = sum(count for count, _ in self._refused.values())
        what = ", ".join(
            f"{name.strip('()')} ({count} path(s), first {first})"
            for name, (count, first) in sorted(self._refused.items())
        )
        message = (
            f"{paths} attribute(s) or node(s) could not be restored, as this process or "
            f"file system does not allow it: {what}; restore as root, onto a file system "
            "that supports them, to get them back"
        )
        self.warnings.append(message)
        log.warning("restore.attributes_skipped", archive=self.archive, detail=message)
