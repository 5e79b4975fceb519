"""Helpers shared by the archive format, integrity and safety tests."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import itertools
import json
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import zstandard

from cellvault import ArchiveId, ArchiveMeta, Cell, Config, Manifest, Sidecar, Vault
from cellvault.manifest import Entry

UTC = dt.UTC


class TickingClock:
    """A clock that moves one second per call: runs never wait for the next second."""

    def __init__(self, start: dt.datetime = dt.datetime(2025, 1, 1, 2, 0, tzinfo=UTC)) -> None:
        self._ticks = itertools.count()
        self.start = start

    def __call__(self) -> dt.datetime:
        return self.start + dt.timedelta(seconds=next(self._ticks))


def make_vault(
    backup_dir: Path,
    paths: Iterable[Path] | dict[str, Iterable[Path]],
    *,
    clock: Callable[[], dt.datetime] | None = None,
    exclude: Iterable[str] = (),
    **config: Any,
) -> Vault:
    """A vault with one cell ``crm`` on *paths* (or several cells), backed up into *backup_dir*."""
    if isinstance(paths, dict):
        cells = [Cell(name, list(p), exclude=tuple(exclude)) for name, p in paths.items()]
    else:
        cells = [Cell("crm", list(paths), exclude=tuple(exclude))]
    return Vault(
        Config(backup_dir=backup_dir, cells=cells, **config),
        load_entry_points=False,
        clock=clock or TickingClock(),
    )


# -- comparing trees ----------------------------------------------------------

Snapshot = dict[str, tuple[Any, ...]]


def snapshot(root: Path, *, with_mtime: bool = True) -> Snapshot:
    """Everything a restore must reproduce of the tree at *root* (the root included)."""
    out: Snapshot = {}

    def record(path: Path, rel: str) -> None:
        st = os.lstat(path)
        mtime = st.st_mtime_ns if with_mtime else None
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("symlink", str(path.readlink()), mtime)
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), mtime)
            for child in sorted(path.iterdir()):
                record(child, f"{rel}/{child.name}" if rel != "." else child.name)
        elif stat.S_ISREG(st.st_mode):
            out[rel] = ("file", stat.S_IMODE(st.st_mode), mtime, path.read_bytes())
        else:
            out[rel] = ("special", stat.S_IFMT(st.st_mode))

    record(root, ".")
    return out


def all_paths(root: Path, *, skip: Iterable[Path] = ()) -> set[str]:
    """Every path under *root* (not following links), except under *skip*."""
    skipped = {str(p) for p in skip}
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        if any(dirpath == s or dirpath.startswith(s + os.sep) for s in skipped):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = str(Path(dirpath, name))
            if path not in skipped:
                found.add(path)
    return found


# -- reading and writing archives by hand ------------------------------------------------


def archive_files(backup_dir: Path, cell: str = "crm") -> list[Path]:
    folder = backup_dir / cell
    return sorted(p for p in folder.iterdir() if p.name.endswith((".tar.zst", ".tar.gz")))


def read_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """The members of an archive file, in order, with the data of regular files."""
    raw = path.read_bytes()
    if path.name.endswith(".zst"):
        raw = (
            zstandard.ZstdDecompressor()
            .stream_reader(io.BytesIO(raw), read_across_frames=True)
            .read()
        )
        mode = "r:"
    else:
        mode = "r:gz"
    out = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode=mode) as tar:  # type: ignore[call-overload]
        for info in tar:
            data = tar.extractfile(info).read() if info.isreg() else None  # type: ignore[union-attr]
            out.append((info, data))
    return out


def member(
    name: str,
    data: bytes = b"",
    *,
    mode: int = 0o644,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    mtime: int = 1_700_000_000,
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.linkname = linkname
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def build_tar(members: Iterable[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def file_entry(
    path: str,
    data: bytes,
    archive: str,
    *,
    mode: int = 0o644,
    mtime_ns: int = 1_700_000_000 * 10**9,
) -> Entry:
    return Entry(
        path=path,
        type="file",
        mode=mode,
        mtime_ns=mtime_ns,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        archive=archive,
    )


def dir_entry(path: str, *, mode: int = 0o755, mtime_ns: int = 1_700_000_000 * 10**9) -> Entry:
    return Entry(path=path, type="dir", mode=mode, mtime_ns=mtime_ns)


def link_entry(path: str, target: str, *, mtime_ns: int = 1_700_000_000 * 10**9) -> Entry:
    return Entry(path=path, type="symlink", mode=0o777, mtime_ns=mtime_ns, target=target)


def hardlink_entry(path: str, target: str, *, mtime_ns: int = 1_700_000_000 * 10**9) -> Entry:
    return Entry(path=path, type="hardlink", mode=0o644, mtime_ns=mtime_ns, target=target)


def plant_archive(
    backup_dir: Path,
    ident: ArchiveId,
    data_members: Iterable[tuple[tarfile.TarInfo, bytes | None]],
    entries: Iterable[Entry],
    *,
    roots: dict[str, str],
    codec: str = "zstd",
) -> Path:
    """Write a hand-made archive into the local target layout, committed by a matching sidecar.

    The tar holds ``meta.json`` first, *data_members*, and ``manifest.json``
    (built from *entries*) last; the manifest copy and the sidecar (with the
    right size and sha256) are written beside it, so it passes the digest
    check: only its content can be refused.
    """
    meta = ArchiveMeta(
        id=ident,
        kind="full",
        backed_at=ident.when,
        host="test",
        version="0",
        codec=codec,
        roots=roots,
    )
    manifest = Manifest(archive=str(ident))
    for entry in entries:
        manifest.add(entry)
    tar = build_tar(
        [
            member("meta.json", meta.to_json()),
            *data_members,
            member("manifest.json", manifest.to_json()),
        ]
    )
    if codec == "zstd":
        data, suffix = zstandard.ZstdCompressor().compress(tar), ".tar.zst"
    else:
        import gzip

        data, suffix = gzip.compress(tar, mtime=0), ".tar.gz"
    folder = backup_dir / ident.cell
    folder.mkdir(parents=True, exist_ok=True)
    data_path = folder / f"{ident}{suffix}"
    data_path.write_bytes(data)
    (folder / f"{ident}.manifest.json.zst").write_bytes(
        zstandard.ZstdCompressor().compress(manifest.to_json())
    )
    sidecar = Sidecar(
        meta=meta,
        data_name=data_path.name,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        files=len(manifest),
    )
    (folder / f"{ident}.json").write_bytes(sidecar.to_json())
    return data_path


def sidecar_of(data_path: Path) -> dict[str, Any]:
    stem = data_path.name.split(".tar.")[0]
    return json.loads((data_path.parent / f"{stem}.json").read_text())
