"""Reading archives back: verify them, and extract them safely into a staging tree.

Archives are read as streams (never seeked), each archive of a chain once. The
archive's sha256 is computed while it is read and compared with its sidecar
when the stream ends. Member names and link targets are checked before
anything is written: absolute paths, ``..``, hard links, devices and links
that escape the destination are refused with :class:`UnsafeArchive`. Files are
created with ``O_EXCL | O_NOFOLLOW`` under directories this module made, so
nothing is ever written through a link.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import tarfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO

import attrs
import zstandard

from .archive import ArchiveMeta, Sidecar
from .codec import HashingReader, codec_for
from .errors import ArchiveCorrupt, UnsafeArchive
from .manifest import Entry, Manifest

__all__ = ["ArchiveStream", "MemberRecord", "StagedTree", "safe_member_path", "verify_archive"]

BLOCK = 1 << 20
TAR_READ_BUFFER = 16 << 10
_STREAM_ERRORS = (tarfile.TarError, zstandard.ZstdError, EOFError, zlib.error, OSError)


@attrs.frozen
class MemberRecord:
    """What a verify saw of one member."""

    type: str
    size: int
    mode: int
    sha256: str | None = None
    target: str | None = None


def safe_member_path(name: str, *, archive: str) -> PurePosixPath:
    """Check an archive member name; raise :class:`UnsafeArchive` for a hostile one."""
    if not name or name.startswith("/") or "\0" in name:
        raise UnsafeArchive(
            f"member name {name!r} is absolute or empty; refused", archive=archive, member=name
        )
    parts = name.rstrip("/").split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeArchive(
            f"member name {name!r} has '..', '.' or empty components; refused",
            archive=archive,
            member=name,
        )
    return PurePosixPath(*parts)


def _check_link(
    entry_path: PurePosixPath,
    target: str,
    *,
    archive: str,
    allow_external: bool,
    links: Mapping[str, str] | None = None,
) -> None:
    """Refuse a link that resolves outside its cell root.

    The target is resolved below ``data/<root>/`` component by component;
    *links* (path -> target of the archive's other symbolic links) are
    followed on the way, so ``a -> d/up/..`` with ``d/up -> ..`` is caught too.
    """
    if allow_external:
        return

    def refuse(why: str) -> UnsafeArchive:
        return UnsafeArchive(
            f"symbolic link to {target!r} {why}; refused",
            archive=archive,
            member=entry_path.as_posix(),
            hint="restore with allow_external_links (--allow-external-links) "
            "if the archive is trusted",
        )

    if target.startswith("/"):
        raise refuse("points to an absolute path, outside the destination")
    links = links or {}
    # Resolve lexically below the cell root: data/<root>/...
    root_depth = 2
    base = list(entry_path.parts[:-1])
    todo = list(reversed(target.split("/")))
    hops = 0
    while todo:
        part = todo.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if len(base) <= root_depth:
                raise refuse("points outside the destination")
            base.pop()
            continue
        base.append(part)
        via = links.get("/".join(base))
        if via is None:
            continue
        hops += 1
        if hops > 40:
            return  # a loop: the kernel refuses to resolve it (ELOOP), it leads nowhere
        if via.startswith("/"):
            through = "/".join(base)
            raise refuse(f"leads through the link {through} to an absolute path, outside")
        base.pop()
        todo.extend(reversed(via.split("/")))


class ArchiveStream:
    """Iterate the members of one stored archive, checking its digest at the end."""

    def __init__(self, raw: IO[bytes], sidecar: Sidecar, target: str) -> None:
        self.sidecar = sidecar
        self.target = target
        self.archive = str(sidecar.id)
        self._hashing = HashingReader(raw)
        self._reader = codec_for(sidecar.data_name).reader(self._hashing)  # type: ignore[arg-type]
        self.current: str | None = None
        self.meta: ArchiveMeta | None = None
        self.manifest_raw: bytes | None = None
        #: Set when the stream ended but its sha256 or size differs from the sidecar: why.
        self.digest_mismatch: str | None = None

    def _reader_of(self, tar: tarfile.TarFile, info: tarfile.TarInfo, name: str) -> IO[bytes]:
        f = tar.extractfile(info)
        assert f is not None
        return _MemberReader(f, self, name)  # type: ignore[return-value]

    def corrupt(self, message: str, member: str | None = None) -> ArchiveCorrupt:
        return ArchiveCorrupt(
            message,
            archive=self.archive,
            member=member,
            target=self.target,
            hint="the stored copy is damaged; verify other targets and restore from a good one",
        )

    def members(self) -> Iterator[tuple[tarfile.TarInfo, PurePosixPath, IO[bytes] | None]]:
        """Yield each data member with its checked path and, for files, a reader.

        ``meta.json`` and ``manifest.json`` are consumed here (see :attr:`meta`
        and :attr:`manifest_raw`).
        """
        try:
            # A small read buffer: tarfile's stream mode copies what is left of
            # its buffer at every 512-byte header, so 1 MiB cost ~0.5 s per
            # 200 MB archive (docs/performance.md, proposal 1).
            tar = tarfile.open(fileobj=self._reader, mode="r|", bufsize=TAR_READ_BUFFER)  # noqa: SIM115 - a stream, read to its end below
            seen: set[str] = set()
            first = True
            for info in tar:
                name = info.name
                self.current = name
                path = safe_member_path(name, archive=self.archive)
                norm = path.as_posix()
                if norm in seen:
                    raise UnsafeArchive(
                        "member appears twice; refused", archive=self.archive, member=norm
                    )
                seen.add(norm)
                if first:
                    first = False
                    if norm != "meta.json" or not info.isreg():
                        raise self.corrupt("meta.json is not the first member", member=norm)
                    self.meta = self._meta(tar, info)
                    continue
                if norm == "manifest.json":
                    f = tar.extractfile(info)
                    assert f is not None
                    self.manifest_raw = f.read()
                    continue
                if self.manifest_raw is not None:
                    raise self.corrupt("a member follows manifest.json", member=norm)
                if not (info.isreg() or info.isdir() or info.issym()):
                    raise UnsafeArchive(
                        f"member is a {_tar_kind(info)}; only files, directories and symbolic links are allowed",
                        archive=self.archive,
                        member=norm,
                    )
                if len(path.parts) < 2 or path.parts[0] not in ("data", "dumps"):
                    raise UnsafeArchive(
                        "member lies outside data/ and dumps/", archive=self.archive, member=norm
                    )
                yield info, path, self._reader_of(tar, info, norm) if info.isreg() else None
            if self.meta is None:
                raise self.corrupt("the archive is empty (no meta.json)")
            if self.manifest_raw is None:
                raise self.corrupt(
                    "manifest.json is missing: the archive is truncated", member=self.current
                )
            self.current = None
            self._hashing.drain()
        except (ArchiveCorrupt, UnsafeArchive):
            raise
        except _STREAM_ERRORS as exc:
            where = f"at or after member {self.current}" if self.current else "at its start"
            raise self.corrupt(
                f"unreadable {where} ({type(exc).__name__}: {exc}); truncated or damaged"
            ) from None
        if (
            self._hashing.count != self.sidecar.size
            or self._hashing.hexdigest() != self.sidecar.sha256
        ):
            self.digest_mismatch = (
                f"sha256 {self._hashing.hexdigest()[:16]}… over {self._hashing.count} bytes does not match "
                f"the sidecar ({self.sidecar.sha256[:16]}… over {self.sidecar.size} bytes)"
            )
            raise self.corrupt(self.digest_mismatch)

    def _meta(self, tar: tarfile.TarFile, info: tarfile.TarInfo) -> ArchiveMeta:
        f = tar.extractfile(info)
        assert f is not None
        try:
            data = json.loads(f.read())
        except ValueError:
            raise self.corrupt("meta.json is not JSON", member="meta.json") from None
        if not isinstance(data, dict) or "backed_at" not in data:
            raise self.corrupt("meta.json has no backed_at", member="meta.json")
        meta = ArchiveMeta.from_dict(data)
        if meta.id != self.sidecar.id:
            raise self.corrupt(f"meta.json names archive {meta.id}", member="meta.json")
        return meta

    def manifest(self) -> Manifest:
        """The manifest read from the end of the stream (after :meth:`members` is exhausted)."""
        assert self.manifest_raw is not None
        return Manifest.from_json(self.manifest_raw, archive=self.archive)


class _MemberReader:
    """A member's data: a damaged or truncated stream raises :class:`ArchiveCorrupt` naming it."""

    def __init__(self, raw: IO[bytes], stream: ArchiveStream, name: str) -> None:
        self.raw = raw
        self.stream = stream
        self.name = name

    def read(self, size: int = -1) -> bytes:
        try:
            return self.raw.read(size)
        except _STREAM_ERRORS as exc:
            raise self.stream.corrupt(
                f"unreadable data ({type(exc).__name__}: {exc}); truncated or damaged",
                member=self.name,
            ) from None


def _tar_kind(info: tarfile.TarInfo) -> str:
    if info.islnk():
        return "hard link"
    if info.ischr() or info.isblk():
        return "device"
    if info.isfifo():
        return "named pipe"
    return f"member of type {info.type!r}"


def _hash_stream(f: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()


def verify_archive(
    raw: IO[bytes], sidecar: Sidecar, target: str
) -> tuple[ArchiveMeta, Manifest, int]:
    """Read a stored archive to its end and check it against its sidecar and manifest.

    Checks: the sha256 and size match the sidecar; ``meta.json`` is first and
    has ``backed_at``; every member is safe, listed in the manifest and
    matches it (type, size, sha256, mode, link target); every path the
    manifest says this archive holds is present. Returns the meta, the
    manifest and the number of members.
    """
    stream = ArchiveStream(raw, sidecar, target)
    seen: dict[str, MemberRecord] = {}
    try:
        for info, path, f in stream.members():
            name = path.as_posix()
            if f is not None:
                seen[name] = MemberRecord("file", info.size, info.mode, sha256=_hash_stream(f))
            elif info.isdir():
                seen[name] = MemberRecord("dir", 0, info.mode)
            else:
                seen[name] = MemberRecord("symlink", 0, info.mode, target=info.linkname)
    except ArchiveCorrupt:
        if not stream.digest_mismatch or stream.manifest_raw is None:
            raise
        # The whole stream read but does not hash right: name the damaged member if the
        # archive's own manifest can tell which one it is.
        try:
            check_members(stream, stream.manifest(), seen)
        except ArchiveCorrupt as damaged:
            where = ArchiveCorrupt(
                "", archive=damaged.archive, member=damaged.member, target=damaged.target
            ).message
            detail = damaged.message.removeprefix(where)
            raise stream.corrupt(
                f"{detail}; {stream.digest_mismatch}", member=damaged.member
            ) from None
        raise
    assert stream.meta is not None
    manifest = stream.manifest()
    check_members(stream, manifest, seen)
    return stream.meta, manifest, len(seen)


def check_members(stream: ArchiveStream, manifest: Manifest, seen: dict[str, MemberRecord]) -> None:
    """Compare what a stream held with its manifest; raise :class:`ArchiveCorrupt` on a difference."""
    for name, rec in seen.items():
        entry = manifest.get(name)
        if entry is None:
            raise stream.corrupt("member is not in the manifest", member=name)
        if entry.type != rec.type:
            raise stream.corrupt(
                f"member is a {rec.type}, the manifest says {entry.type}", member=name
            )
        if rec.type == "file":
            if entry.archive != stream.archive:
                raise stream.corrupt(f"manifest says archive {entry.archive} holds it", member=name)
            if rec.size != entry.size or rec.sha256 != entry.sha256:
                raise stream.corrupt(
                    "content does not match the manifest (sha256 differs)", member=name
                )
        if rec.type == "symlink" and rec.target != entry.target:
            raise stream.corrupt("link target does not match the manifest", member=name)
        if rec.mode != entry.mode:
            raise stream.corrupt(
                f"mode {rec.mode:o} does not match the manifest ({entry.mode:o})", member=name
            )
    for entry in manifest:
        held_here = entry.type != "file" or entry.archive == stream.archive
        if held_here and entry.path not in seen:
            raise stream.corrupt(
                "listed in the manifest but missing from the archive", member=entry.path
            )


@attrs.define
class StagedTree:
    """Build a cell's tree from its manifest and archives, in a staging directory.

    *staging* receives ``<root name>/...`` for each ``data/<root name>`` of the
    manifest. With *dumps*, the ``dumps/`` tree (database dumps) is extracted
    and checked there too (``dumps/<dumper>/...`` lands in ``<dumps>/<dumper>/...``);
    without, it is skipped. Call :meth:`prepare`, then :meth:`take` once per
    archive of the chain (any order), then :meth:`finish`.
    """

    staging: Path
    manifest: Manifest
    archive: str
    allow_external_links: bool = False
    on_bytes: Callable[[int], None] | None = None
    dumps: Path | None = None
    _pending: dict[str, Entry] = attrs.field(init=False, factory=dict)
    _dirs: set[Path] = attrs.field(init=False, factory=set)
    files: int = attrs.field(init=False, default=0)
    bytes: int = attrs.field(init=False, default=0)

    def _dest(self, path: str) -> Path | None:
        """Where a manifest path goes; ``None`` for a dump when dumps are not wanted."""
        rel = safe_member_path(path, archive=self.archive)
        if rel.parts[0] == "dumps":
            return None if self.dumps is None else self.dumps.joinpath(*rel.parts[1:])
        if rel.parts[0] != "data" or len(rel.parts) < 2:
            raise UnsafeArchive(
                "manifest path lies outside data/", archive=self.archive, member=path
            )
        return self.staging.joinpath(*rel.parts[1:])

    def prepare(self) -> None:
        """Check every manifest path and create the directories."""
        self.staging.mkdir(parents=True, exist_ok=True)
        self._dirs.add(self.staging)
        links = {e.path: e.target or "" for e in self.manifest if e.type == "symlink"}
        for entry in self.manifest:
            dest = self._dest(entry.path)
            if dest is None:
                continue
            parts = PurePosixPath(entry.path).parts
            if parts[0] == "dumps":
                if entry.type == "symlink":
                    raise UnsafeArchive(
                        "a symbolic link under dumps/; refused",
                        archive=self.archive,
                        member=entry.path,
                    )
            elif (
                len(parts) == 2 and self.dumps is not None and self.staging / parts[1] == self.dumps
            ):
                raise UnsafeArchive(
                    "a cell path has the name of the dumps folder; refused",
                    archive=self.archive,
                    member=entry.path,
                )
            for depth in range(1, len(parts)):
                above = self.manifest.get("/".join(parts[:depth]))
                if above is not None and above.type != "dir":
                    kind = "symbolic link" if above.type == "symlink" else above.type
                    raise UnsafeArchive(
                        f"path lies under the {kind} {above.path}; refused",
                        archive=self.archive,
                        member=entry.path,
                    )
            if entry.type == "symlink":
                assert entry.target is not None
                _check_link(
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

    def holders(self) -> set[str]:
        """The archives that still have to be read."""
        return {e.archive for e in self._pending.values() if e.archive}

    def _mkdir(self, path: Path) -> None:
        if path in self._dirs:
            return
        self._mkdir(path.parent)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(path).st_mode):
                raise UnsafeArchive(
                    "a directory path is taken by a file or link",
                    archive=self.archive,
                    member=str(path),
                ) from None
        self._dirs.add(path)

    def take(self, stream: ArchiveStream) -> None:
        """Extract from *stream* the files the manifest says it holds, checking each."""
        holder = stream.archive
        for _info, path, f in stream.members():
            name = path.as_posix()
            entry = self._pending.get(name)
            if f is None or entry is None or entry.archive != holder:
                continue
            dest = self._dest(name)
            assert dest is not None  # only wanted paths are pending
            self._mkdir(dest.parent)
            digest = hashlib.sha256()
            size = 0
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                for block in iter(lambda: f.read(BLOCK), b""):  # noqa: B023 - consumed in this iteration
                    digest.update(block)
                    out.write(block)
                    size += len(block)
                    if self.on_bytes is not None:
                        self.on_bytes(len(block))
            if size != entry.size or digest.hexdigest() != entry.sha256:
                raise stream.corrupt(
                    "content does not match the manifest (sha256 differs)", member=name
                )
            del self._pending[name]
            self.files += 1
            self.bytes += size
        # The selected archive's own manifest must be the one we planned with.
        if stream.archive == self.archive and (
            stream.manifest_raw is None or stream.manifest().entries != self.manifest.entries
        ):
            raise stream.corrupt(
                "manifest.json differs from the stored manifest copy", member="manifest.json"
            )

    def finish(self) -> None:
        """Create links, then set modes, owners and times (directories last, deepest first)."""
        if self._pending:
            missing = sorted(self._pending)[0]
            entry = self._pending[missing]
            raise ArchiveCorrupt(
                f"{len(self._pending)} file(s) were not found in the archives that should hold them",
                archive=entry.archive or self.archive,
                member=missing,
            )
        as_root = os.geteuid() == 0
        dirs: list[tuple[Path, Entry]] = []
        for entry in self.manifest:
            dest = self._dest(entry.path)
            if dest is None:
                continue
            if entry.type == "symlink":
                assert entry.target is not None
                self._mkdir(dest.parent)
                os.symlink(entry.target, dest)
                if as_root:
                    with contextlib.suppress(OSError):
                        os.lchown(dest, entry.uid, entry.gid)
                os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            elif entry.type == "file":
                if as_root:
                    with contextlib.suppress(OSError):
                        os.chown(dest, entry.uid, entry.gid, follow_symlinks=False)
                os.chmod(dest, entry.mode, follow_symlinks=False)
                os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            else:
                dirs.append((dest, entry))
        for dest, entry in sorted(dirs, key=lambda d: len(d[0].parts), reverse=True):
            if as_root:
                with contextlib.suppress(OSError):
                    os.chown(dest, entry.uid, entry.gid, follow_symlinks=False)
            os.chmod(dest, entry.mode)
            os.utime(dest, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
