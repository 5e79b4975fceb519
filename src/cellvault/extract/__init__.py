"""Reading archives back: verify them, and extract them safely into a staging tree.

Archives are read as streams (never seeked), each archive of a chain once. The
archive's sha256 is computed while it is read and compared with its sidecar
when the stream ends. The tar stream is parsed by a small reader for the
subset cellvault writes (ustar headers and pax ``x`` records); the input is
untrusted, so every malformed or truncated header is :class:`ArchiveCorrupt`.
Member names are checked before anything is written: absolute paths, ``..``,
duplicates, paths below a link or a file and hard links to anything but a
file of the archive are refused with :class:`UnsafeArchive`. Links are data
and are restored verbatim; every path is created relative to directory file
descriptors opened with ``O_NOFOLLOW``, and links last, so nothing is ever
written through a link.

The parts: :mod:`~cellvault.extract.tarread` (the tar reader),
:mod:`~cellvault.extract.inflate` (decompression in a forked child),
:mod:`~cellvault.extract.stream` (one archive's members, and verify),
:mod:`~cellvault.extract.names` (name and link checks) and
:mod:`~cellvault.extract.stage` (the staging tree).
"""

from __future__ import annotations

from .names import safe_member_path
from .stage import StagedTree
from .stream import ArchiveStream, MemberRecord, verify_archive
from .tarread import TarMember

__all__ = [
    "ArchiveStream",
    "MemberRecord",
    "StagedTree",
    "TarMember",
    "safe_member_path",
    "verify_archive",
]
