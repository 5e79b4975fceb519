"""What a Linux file is besides its bytes: extended attributes, ACLs, holes, devices.

Used on both sides: the packer reads a path's extended attributes (POSIX ACLs
are the ``system.posix_acl_access`` and ``system.posix_acl_default``
attributes among them) and the data map of a sparse file
(``SEEK_DATA``/``SEEK_HOLE``); extraction sets the attributes back and writes a
sparse file's data at its offsets, leaving the holes as holes. The archive
carries them as PAX records that GNU tar and bsdtar read (see docs/format.md):
``SCHILY.xattr.<name>`` and the PAX sparse format 1.0 (``GNU.sparse.*``).
"""

from __future__ import annotations

import base64
import errno
import os
import stat
import tarfile
from collections.abc import Sequence
from typing import Any

from .manifest import Entry
from .tarwrite import BLOCK, ZEROS, TarWriter, pax_mtime, tar_header

__all__ = [
    "SPECIAL_TAR_TYPES",
    "XATTR_PREFIX",
    "Xattrs",
    "acl_text",
    "add_sparse",
    "data_map",
    "decode_xattrs",
    "encode_xattrs",
    "member_header",
    "privileged_warning",
    "read_xattrs",
    "set_xattrs",
    "sparse_map_block",
    "sparse_map_parse",
    "special_kind",
    "special_type",
    "xattr_records",
]

#: The PAX keyword prefix of an extended attribute (star, GNU tar, bsdtar).
XATTR_PREFIX = "SCHILY.xattr."

#: The tar member type of each special file's manifest type.
SPECIAL_TAR_TYPES = {
    "fifo": tarfile.FIFOTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
}

#: A path's extended attributes: (name, value) sorted by name.
Xattrs = tuple[tuple[str, bytes], ...]

#: Errors that mean "this file system or this process cannot have these attributes".
_UNSUPPORTED = (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES, errno.EINVAL)


def read_xattrs(path: str | int) -> Xattrs:
    """The extended attributes of *path* (not following a link), or of an open
    descriptor; ``()`` where there are none."""
    # A descriptor is what it is: following links does not apply (nor is it allowed).
    follow = isinstance(path, int)
    try:
        names = os.listxattr(path, follow_symlinks=follow)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOENT):
            return ()
        raise
    if not names:
        return ()
    out: list[tuple[str, bytes]] = []
    for name in sorted(names):
        try:
            out.append((name, os.getxattr(path, name, follow_symlinks=follow)))
        except OSError as exc:
            if exc.errno in (errno.ENODATA, errno.ENOENT):
                continue  # removed since it was listed
            raise
    return tuple(out)


def encode_xattrs(xattrs: Xattrs) -> tuple[tuple[str, str], ...]:
    """Attributes as the manifest keeps them: values in base64."""
    return tuple((k, base64.b64encode(v).decode("ascii")) for k, v in xattrs)


def decode_xattrs(xattrs: Sequence[tuple[str, str]]) -> Xattrs:
    """The manifest's attributes back as bytes."""
    return tuple((k, base64.b64decode(v)) for k, v in xattrs)


def set_xattrs(target: int | str, xattrs: Xattrs, *, dir_fd: int | None = None) -> list[str]:
    """Set *xattrs* on an open fd, or on a name (not followed) under *dir_fd*.

    Returns the names this process or file system may not set (``EPERM``,
    ``ENOTSUP``, ...); other errors are raised.
    """
    refused: list[str] = []
    for name, value in xattrs:
        try:
            if isinstance(target, int):
                os.setxattr(target, name, value)
            else:
                # No setxattr relative to a directory fd: through /proc/self/fd.
                where = f"/proc/self/fd/{dir_fd}/{target}" if dir_fd is not None else target
                os.setxattr(where, name, value, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            refused.append(name)
    return refused


def data_map(fd: int, size: int) -> list[tuple[int, int]] | None:
    """The (offset, length) of *fd*'s data regions, or ``None`` when it has no hole.

    Found with ``SEEK_DATA``/``SEEK_HOLE``; a file system without them (or a
    file with no hole) gives ``None``: the file is stored whole.
    """
    regions: list[tuple[int, int]] = []
    pos = 0
    try:
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break  # only a hole to the end
                raise
            if start >= size:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            regions.append((start, end - start))
            pos = end
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
            return None
        raise
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    if len(regions) == 1 and regions[0] == (0, size):
        return None
    return regions


def sparse_map_block(regions: Sequence[tuple[int, int]], size: int) -> bytes:
    """The data-area map of PAX sparse format 1.0, padded to 512 bytes, as GNU tar writes it.

    A file that ends in a hole gets a last empty region at its size, as GNU tar
    does, so that its readers make the file as long.
    """
    entries = list(regions)
    if not entries or entries[-1][0] + entries[-1][1] < size:
        entries.append((size, 0))
    lines = [str(len(entries))]
    for offset, length in entries:
        lines += (str(offset), str(length))
    text = ("\n".join(lines) + "\n").encode("ascii")
    return text + bytes(-len(text) % 512)


def sparse_map_parse(head: bytes, realsize: int) -> tuple[list[tuple[int, int]], int] | None:
    """Parse a sparse map from the start of a member's data.

    Returns the regions and the number of bytes the map takes (a multiple of
    512), or ``None`` when *head* does not hold the whole map yet (or it is malformed
    beyond repair: the caller then reports the member as damaged).
    """
    numbers: list[int] = []
    pos = 0
    count = -1
    while count < 0 or len(numbers) < 2 * count:
        nl = head.find(b"\n", pos, pos + 21)
        if nl < 0:
            return None
        digits = head[pos:nl]
        if not digits.isdigit():
            raise ValueError("invalid sparse map")
        if count < 0:
            count = int(digits)
            if count > 1 << 20:
                raise ValueError("sparse map too long")
        else:
            numbers.append(int(digits))
        pos = nl + 1
    regions = [(numbers[i], numbers[i + 1]) for i in range(0, len(numbers), 2)]
    last = 0
    for offset, length in regions:
        if offset < last or offset + length > realsize:
            raise ValueError("sparse map regions out of order or beyond the file's size")
        last = offset + length
    return regions, pos + (-pos % 512)


def special_kind(mode: int) -> str:
    """What a path that is not a regular file is, in words (for messages)."""
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "named pipe"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    return "special file"


def privileged_warning(path: str, xattrs: Xattrs) -> str | None:
    """The backup-time warning for attributes only root may set, when not running as root."""
    if os.geteuid() == 0:
        return None
    names = [n for n, _ in xattrs if not n.startswith(("user.", "system.posix_acl_"))]
    if not names:
        return None
    return (
        f"{path} has extended attributes ({', '.join(names)}) that only a restore run as "
        "root can set (the first such path of this cell; others are not listed)"
    )


def member_header(entry: Entry, kind: bytes, xattrs: Xattrs, rdev: int | None = None) -> bytes:
    """The tar header of a member without data (directory, link, FIFO, device)."""
    return tar_header(
        entry.path,
        kind,
        entry.mode,
        entry.uid,
        entry.gid,
        0,
        pax_mtime(entry.mtime_ns),
        entry.target or "",
        extra=xattr_records(xattrs),
        rdev=rdev,
    )


def special_type(mode: int) -> str | None:
    """The manifest type of a FIFO or device node; ``None`` for anything else."""
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "chardev"
    if stat.S_ISBLK(mode):
        return "blockdev"
    return None


def xattr_records(xattrs: Xattrs) -> list[tuple[str, bytes]]:
    """The PAX records of *xattrs* (``SCHILY.xattr.<name>=<value>``).

    POSIX ACLs also get star's text records (``SCHILY.acl.access`` and
    ``SCHILY.acl.default``), which bsdtar reads (it ignores the ACLs'
    attributes) and GNU tar reads with ``--acls``.
    """
    records = [(XATTR_PREFIX + name, value) for name, value in xattrs]
    for name, value in xattrs:
        which = _ACL_RECORDS.get(name)
        text = acl_text(value) if which else None
        if which and text:
            records.append((which, text.encode("ascii")))
    return records


_ACL_RECORDS = {
    "system.posix_acl_access": "SCHILY.acl.access",
    "system.posix_acl_default": "SCHILY.acl.default",
}
_ACL_TAGS = {0x01: "user", 0x02: "user", 0x04: "group", 0x08: "group", 0x10: "mask", 0x20: "other"}


def acl_text(value: bytes) -> str | None:
    """A POSIX ACL attribute's value as star's text (``user:1234:rw-:1234,...``).

    ``None`` if it is not an ACL in the kernel's format (version 2).
    """
    if len(value) < 4 or (len(value) - 4) % 8 or int.from_bytes(value[:4], "little") != 2:
        return None
    parts = []
    for at in range(4, len(value), 8):
        tag = int.from_bytes(value[at : at + 2], "little")
        perm = int.from_bytes(value[at + 2 : at + 4], "little")
        ident = int.from_bytes(value[at + 4 : at + 8], "little")
        name = _ACL_TAGS.get(tag)
        if name is None:
            return None
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        named = tag in (0x02, 0x08)
        parts.append(f"{name}:{ident}:{bits}:{ident}" if named else f"{name}::{bits}")
    return ",".join(parts)


def _hash_zeros(digest: Any, n: int) -> None:
    while n > 0:
        step = min(n, BLOCK)
        digest.update(ZEROS[:step])
        n -= step


def add_sparse(
    tar: TarWriter,
    name: str,
    st: os.stat_result,
    fd: int,
    digest: Any,
    regions: Sequence[tuple[int, int]],
    xattrs: Xattrs,
) -> bool:
    """Write a sparse file as a PAX sparse 1.0 member: its map, then its data regions.

    *digest* is updated with the file's whole content (holes as zeros), as for
    any file. Returns whether the file was shorter than its map said (the
    missing bytes are stored as zeros).
    """
    size = st.st_size
    block = sparse_map_block(regions, size)
    stored = len(block) + sum(length for _, length in regions)
    folder, _, base = name.rpartition("/")
    extra = [
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", name.encode("utf-8", "surrogateescape")),
        ("GNU.sparse.realsize", b"%d" % size),
        *xattr_records(xattrs),
    ]
    mode = stat.S_IMODE(st.st_mode)
    mtime = pax_mtime(st.st_mtime_ns)
    header_name = f"{folder}/GNUSparseFile.0/{base}"
    tar.write(
        tar_header(
            header_name, tarfile.REGTYPE, mode, st.st_uid, st.st_gid, stored, mtime, extra=extra
        )
    )
    tar.write(block)
    pos = 0
    short = False
    for offset, length in regions:
        _hash_zeros(digest, offset - pos)
        done = 0
        while done < length:
            want = min(BLOCK, length - done)
            data = os.pread(fd, want, offset + done)
            if len(data) < want:
                if not data:
                    short = True
                    data = bytes(want)
                else:
                    want = len(data)
            digest.update(data)
            tar.write(data)
            done += want
        pos = offset + length
    _hash_zeros(digest, size - pos)
    tar.pad()
    return short
