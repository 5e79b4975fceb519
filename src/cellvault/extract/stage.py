"""Extracting a cell's tree from its archives into a staging directory, safely.

Member names and link targets are checked before anything is written:
absolute paths, ``..``, hard links, devices and links that escape the
destination are refused with :class:`~cellvault.UnsafeArchive`. Files are
created with ``O_EXCL | O_NOFOLLOW`` under directories this module made, so
nothing is ever written through a link, and each is checked against the
manifest as it is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import attrs

from ..errors import ArchiveCorrupt, UnsafeArchive
from ..manifest import Entry, Manifest
from .names import check_link, checked_name
from .stream import ArchiveStream, MemberData
from .tarread import BLOCK

__all__ = ["StagedTree"]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _set_attributes(fd: int, entry: Entry, as_root: bool) -> None:
    """Owner, mode and times through the open file, right after its data."""
    if as_root:
        with contextlib.suppress(OSError):
            os.fchown(fd, entry.uid, entry.gid)
    # After chown, which clears the set-user-ID and set-group-ID bits; the data
    # is written already, so a read-only mode is harmless.
    os.fchmod(fd, entry.mode)
    os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))


@attrs.define
class StagedTree:
    """Build a cell's tree from its manifest and archives, in a staging directory.

    *staging* receives ``<root name>/...`` for each ``data/<root name>`` of the
    manifest. With *dumps*, the ``dumps/`` tree (database dumps) is extracted
    and checked there too (``dumps/<dumper>/...`` lands in ``<dumps>/<dumper>/...``);
    without, it is skipped. Call :meth:`prepare`, then :meth:`take` once per
    archive of the chain (any order), then :meth:`finish`.

    Each file gets its owner, mode and times as soon as its data is written;
    :meth:`finish` creates the links and sets the directories.
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
    _pending: dict[str, Entry] = attrs.field(init=False, factory=dict)
    _dirs: set[str] = attrs.field(init=False, factory=set)
    #: Manifest path -> where it goes (``None``: a dump that is not wanted), checked once.
    _dests: dict[str, str | None] = attrs.field(init=False, factory=dict)
    files: int = attrs.field(init=False, default=0)
    bytes: int = attrs.field(init=False, default=0)

    def _dest(self, path: str) -> str | None:
        """Where a manifest path goes; ``None`` for a dump when dumps are not wanted."""
        try:
            return self._dests[path]
        except KeyError:
            pass
        norm = checked_name(path, self.archive)
        top, slash, _ = norm.partition("/")
        dest: str | None
        if top == "dumps":
            dest = None if self.dumps is None else os.fspath(self.dumps) + norm[5:]
        elif top != "data" or not slash:
            raise UnsafeArchive(
                "manifest path lies outside data/", archive=self.archive, member=path
            )
        else:
            dest = os.fspath(self.staging) + norm[4:]
        self._dests[path] = dest
        return dest

    def prepare(self) -> None:
        """Check every manifest path and create the directories."""
        self.staging.mkdir(parents=True, exist_ok=True)
        self._dirs.add(os.fspath(self.staging))
        links = {e.path: e.target or "" for e in self.manifest if e.type == "symlink"}
        not_dirs = {e.path for e in self.manifest if e.type != "dir"}
        dumps_name = None
        if self.dumps is not None and self.dumps.parent == self.staging:
            dumps_name = self.dumps.name
        for entry in self.manifest:
            dest = self._dest(entry.path)
            if dest is None:
                continue
            norm = checked_name(entry.path, self.archive)
            parts = norm.split("/")
            if parts[0] == "dumps":
                if entry.type == "symlink":
                    raise UnsafeArchive(
                        "a symbolic link under dumps/; refused",
                        archive=self.archive,
                        member=entry.path,
                    )
            elif len(parts) == 2 and parts[1] == dumps_name:
                raise UnsafeArchive(
                    "a cell path has the name of the dumps folder; refused",
                    archive=self.archive,
                    member=entry.path,
                )
            above = norm
            while (cut := above.rfind("/")) > 0:
                above = above[:cut]
                if above in not_dirs:
                    self._refuse_under(parts, entry)
            if entry.type == "symlink":
                assert entry.target is not None
                check_link(
                    PurePosixPath(entry.path),
                    entry.target,
                    archive=self.archive,
                    allow_external=self.allow_external_links,
                    links=links,
                )
            elif entry.type == "dir":
                self._mkdir(dest)
            elif entry.type == "file":
                self._pending[entry.path] = entry

    def _refuse_under(self, parts: list[str], entry: Entry) -> None:
        # Name the outermost file or link the path lies under.
        for depth in range(1, len(parts)):
            above = self.manifest.get("/".join(parts[:depth]))
            if above is not None and above.type != "dir":
                kind = "symbolic link" if above.type == "symlink" else above.type
                raise UnsafeArchive(
                    f"path lies under the {kind} {above.path}; refused",
                    archive=self.archive,
                    member=entry.path,
                )

    def holders(self) -> set[str]:
        """The archives that still have to be read."""
        return {e.archive for e in self._pending.values() if e.archive}

    def _mkdir(self, path: str) -> None:
        if path in self._dirs:
            return
        parent = os.path.dirname(path)
        if parent and parent != path:
            self._mkdir(parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise UnsafeArchive(
                    "a directory path is taken by a file or link",
                    archive=self.archive,
                    member=path,
                ) from None
        self._dirs.add(path)

    def take(self, stream: ArchiveStream) -> None:
        """Extract from *stream* the files the manifest says it holds, checking each."""
        try:
            self._take(stream, os.geteuid() == 0)
        finally:
            stream.close()
        # The selected archive's own manifest must be the one we planned with.
        if (
            not self.partial
            and stream.archive == self.archive
            and (stream.manifest_raw is None or stream.manifest().entries != self.manifest.entries)
        ):
            raise stream.corrupt(
                "manifest.json differs from the stored manifest copy", member="manifest.json"
            )

    def _take(self, stream: ArchiveStream, as_root: bool) -> None:
        holder = stream.archive
        pending = self._pending
        left = sum(1 for e in pending.values() if e.archive == holder)
        if self.partial and not left:
            return
        for _member, name, data in stream.members():
            if data is None:
                continue
            entry = pending.get(name)
            if entry is None or entry.archive != holder:
                continue
            dest = self._dest(name)
            assert dest is not None  # only wanted paths are pending
            self._mkdir(os.path.dirname(dest))
            size = self._write(dest, data, entry, stream, as_root)
            del pending[name]
            self.files += 1
            self.bytes += size
            left -= 1
            if self.partial and not left:
                break  # the rest of the stream holds nothing wanted

    def _write(
        self, dest: str, data: MemberData, entry: Entry, stream: ArchiveStream, as_root: bool
    ) -> int:
        digest = hashlib.sha256()
        size = 0
        fd = os.open(dest, _CREATE, 0o600)
        try:
            while block := data.read(BLOCK):
                digest.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
                size += len(block)
                if self.on_bytes is not None:
                    self.on_bytes(len(block))
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise stream.corrupt(
                    "content does not match the manifest (sha256 differs)", member=data.name
                )
            _set_attributes(fd, entry, as_root)
        finally:
            os.close(fd)
        return size

    def finish(self) -> None:
        """Create links, then set the directories' modes, owners and times (deepest first)."""
        if self._pending:
            missing = sorted(self._pending)[0]
            entry = self._pending[missing]
            raise ArchiveCorrupt(
                f"{len(self._pending)} file(s) were not found in the archives that should hold them",
                archive=entry.archive or self.archive,
                member=missing,
            )
        as_root = os.geteuid() == 0
        dirs: list[tuple[str, Entry]] = []
        for entry in self.manifest:
            dest = self._dest(entry.path)
            if dest is None:
                continue
            if entry.type == "symlink":
                assert entry.target is not None
                self._mkdir(os.path.dirname(dest))
                os.symlink(entry.target, dest)
                if as_root:
                    with contextlib.suppress(OSError):
                        os.lchown(dest, entry.uid, entry.gid)
                os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            elif entry.type == "dir":
                dirs.append((dest, entry))
        for dest, entry in sorted(dirs, key=lambda d: d[0].count("/"), reverse=True):
            if as_root:
                with contextlib.suppress(OSError):
                    os.chown(dest, entry.uid, entry.gid, follow_symlinks=False)
            os.chmod(dest, entry.mode)
            os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
