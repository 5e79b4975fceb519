"""Verify levels: ``quick``, ``full`` and ``drill``, and what each compares.

* **quick** reads no archive data: the sidecar is committed, the data and
  manifest objects exist, the data object has the size the sidecar records
  and, where the store reports a checksum of its own on a HEAD request (OSS's
  CRC-64, an S3 single-part ETag), that checksum matches the one recorded at
  backup time; the chain of an incremental is committed on the same target.
  It proves the stored object is the one that was written, not that every
  byte still reads back: that is ``full``.
* **full** reads every archive back and checks every member against the
  manifest (see :func:`cellvault.extract.verify_archive`), and the chain.
* **drill** restores the newest archive of a cell from one target into a
  scratch directory, compares the tree with the manifest, runs the
  ``cellvault_health_check`` hooks and measures how long it took (the RTO).

This module holds the pieces the :class:`~cellvault.Vault` combines.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

from .archive import ArchiveId, Sidecar
from .errors import ArchiveCorrupt
from .manifest import Manifest
from .targets.base import Target

__all__ = ["LEVELS", "compare_tree", "content_checksums", "quick_check"]

#: The verify levels, cheapest first.
LEVELS: tuple[str, ...] = ("quick", "full", "drill")

_BLOCK = 1 << 20


def _crc64_function() -> Callable[[bytes, int], int] | None:
    """OSS's CRC-64/ECMA-182 through crcmod's C extension (it comes with oss2)."""
    try:
        import crcmod  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return None
    fn: Callable[[bytes, int], int] = crcmod.mkCrcFun(
        0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=0xFFFFFFFFFFFFFFFF
    )
    return fn


def content_checksums(path: Path, kinds: Iterable[str]) -> dict[str, str]:
    """The checksums of the file *path* of the given *kinds* (``md5``, ``crc64ecma``).

    Read in one pass. A kind that cannot be computed here (``crc64ecma``
    without crcmod, an unknown kind) is left out: a quick verify then
    compares the size alone for it.
    """
    wanted = set(kinds)
    md5 = hashlib.md5(usedforsecurity=False) if "md5" in wanted else None
    crc_fn = _crc64_function() if "crc64ecma" in wanted else None
    crc = 0
    if md5 is None and crc_fn is None:
        return {}
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            if md5 is not None:
                md5.update(block)
            if crc_fn is not None:
                crc = crc_fn(block, crc)
    out: dict[str, str] = {}
    if md5 is not None:
        out["md5"] = md5.hexdigest()
    if crc_fn is not None:
        out["crc64ecma"] = str(crc)
    return out


def quick_check(target: Target, sidecar: Sidecar, committed: set[ArchiveId]) -> tuple[str, ...]:
    """Check a committed archive on *target* without reading its data.

    *committed* are the archive ids committed on the target (for the chain).
    Returns what was compared (``size``, and each checksum kind); raises
    :class:`ArchiveCorrupt` naming the archive and target otherwise.
    """
    ident = str(sidecar.id)
    key = f"{sidecar.id.cell}/{sidecar.data_name}"
    try:
        with target.guard(f"stat archive {ident}", missing_ok=True):
            found = target.retrying(target.stat, key)
    except FileNotFoundError:
        raise ArchiveCorrupt(
            "data is missing although the sidecar exists",
            archive=ident,
            target=target.name,
            hint="restore from another target; the next backup stores a new copy",
        ) from None
    if found.size != sidecar.size:
        raise ArchiveCorrupt(
            f"stored data is {found.size} bytes, the sidecar says {sidecar.size} "
            "(truncated or replaced)",
            archive=ident,
            target=target.name,
            hint="restore from another target; run 'cellvault verify --level full' to read it back",
        )
    checks = ["size"]
    for kind, value in sorted(found.checksums.items()):
        recorded = sidecar.checksums.get(kind)
        if recorded is None:
            continue
        if recorded.lower() != value.lower():
            raise ArchiveCorrupt(
                f"the store's {kind} of the data is {value}, the sidecar recorded {recorded} "
                "(the object was replaced or damaged)",
                archive=ident,
                target=target.name,
                hint="restore from another target; run 'cellvault verify --level full' to read it back",
            )
        checks.append(kind)
    try:
        with target.guard(f"stat manifest of {ident}", missing_ok=True):
            target.retrying(target.stat, target.manifest_key(sidecar.id))
    except FileNotFoundError:
        raise ArchiveCorrupt(
            "manifest copy is missing", archive=ident, target=target.name
        ) from None
    for holder in sidecar.meta.chain:
        if holder not in committed:
            raise ArchiveCorrupt(
                f"its chain needs archive {holder}, which is not committed on this target",
                archive=ident,
                target=target.name,
                hint="restore from another target, or take a full backup",
            )
    return tuple(checks)


def compare_tree(root: Path, manifest: Manifest) -> int:
    """Compare a restored tree under *root* with *manifest*; return the paths compared.

    Every ``data/<root name>/...`` entry must be at ``root/<root name>/...``
    with its type, mode, size (files) and link target (links), and nothing
    else may be there. Contents were hashed as they were written.
    """
    expected: dict[str, str] = {}
    for entry in manifest:
        parts = PurePosixPath(entry.path).parts
        if len(parts) < 2 or parts[0] != "data":
            continue
        rel = "/".join(parts[1:])
        expected[rel] = entry.path
        dest = root.joinpath(*parts[1:])
        try:
            st = os.lstat(dest)
        except FileNotFoundError:
            raise ArchiveCorrupt(
                "missing from the restored tree", archive=manifest.archive, member=entry.path
            ) from None
        kind = (
            "symlink"
            if stat.S_ISLNK(st.st_mode)
            else "dir"
            if stat.S_ISDIR(st.st_mode)
            else "file"
            if stat.S_ISREG(st.st_mode)
            else "other"
        )
        problem = None
        if kind != entry.type:
            problem = f"restored as a {kind}, the manifest says {entry.type}"
        elif kind == "file" and st.st_size != entry.size:
            problem = f"restored with {st.st_size} bytes, the manifest says {entry.size}"
        elif kind == "symlink" and os.readlink(dest) != entry.target:
            problem = "link target differs from the manifest"
        elif kind != "symlink" and stat.S_IMODE(st.st_mode) != stat.S_IMODE(entry.mode):
            problem = (
                f"mode {stat.S_IMODE(st.st_mode):o} differs from the manifest's "
                f"{stat.S_IMODE(entry.mode):o}"
            )
        if problem:
            raise ArchiveCorrupt(problem, archive=manifest.archive, member=entry.path)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in expected:
                raise ArchiveCorrupt(
                    "the restored tree holds a path the manifest does not list",
                    archive=manifest.archive,
                    member=f"data/{rel}",
                )
    return len(expected)
