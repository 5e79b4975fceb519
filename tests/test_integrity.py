"""The checks below the verify levels, on bytes and files: checksums, streams, meta.json, trees."""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from pathlib import Path

import pytest
import zstandard

from cellvault import ArchiveCorrupt, ArchiveId, ArchiveMeta, Sidecar
from cellvault.integrity import (
    DECOMPRESS_ERRORS,
    Scan,
    check_meta,
    compare_tree,
    content_checksums,
    scan,
)
from cellvault.manifest import Entry, Manifest
from tests.system_tools import needs_root

ARCHIVE = "cell_crm_20250101_020000"
AS_ROOT = os.geteuid() == 0


def _restored(root: Path) -> Manifest:
    """A restored tree under *root* (root ``crm``) with one path of each kind, and its manifest.

    The manifest also lists a dump (not under ``data/``: not in the tree) and
    gives the symlink and the hard link modes the tree does not have: neither
    is compared for them (a link's mode is not its own; a hard link's is its
    first name's).
    """
    top = root / "crm"
    (top / "sub").mkdir(parents=True)
    (top / "a.txt").write_bytes(b"hello")
    (top / "sub" / "b.txt").write_bytes(b"b" * 300)
    os.chmod(top / "sub" / "b.txt", 0o600)
    os.symlink("a.txt", top / "link")
    os.link(top / "a.txt", top / "hard")
    os.mkfifo(top / "pipe")
    os.chmod(top / "pipe", 0o640)
    if AS_ROOT:
        os.mknod(top / "null", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(top / "null", 0o620)  # past the umask
        os.mknod(top / "loop", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    manifest = Manifest(archive=ARCHIVE)
    manifest.add(Entry("dumps/crm/db.sql", "file", 0o600, 0, size=10))

    def add(rel: str, kind: str, mode: int, **more: object) -> None:
        manifest.add(Entry(f"data/{rel}", kind, mode, 0, **more))  # type: ignore[arg-type]

    add("crm", "dir", stat.S_IMODE(top.stat().st_mode))
    add("crm/a.txt", "file", stat.S_IMODE((top / "a.txt").stat().st_mode), size=5)
    add("crm/sub", "dir", stat.S_IMODE((top / "sub").stat().st_mode))
    add("crm/sub/b.txt", "file", 0o600, size=300)
    add("crm/link", "symlink", 0o000, target="a.txt")
    add("crm/hard", "hardlink", 0o000, target="data/crm/a.txt")
    add("crm/pipe", "fifo", 0o640)
    add("crm/null", "chardev", 0o620, rdev=os.makedev(1, 3))
    add("crm/loop", "blockdev", 0o600, rdev=os.makedev(7, 0))
    return manifest


def _refused(root: Path, manifest: Manifest) -> ArchiveCorrupt:
    with pytest.raises(ArchiveCorrupt) as exc:
        compare_tree(root, manifest)
    assert exc.value.archive == ARCHIVE
    return exc.value


def test_a_tree_as_its_manifest_says_compares_each_path_under_data(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    # The manifest's paths under data/ (a device node only as root: only root makes them).
    assert compare_tree(tmp_path, manifest) == (9 if AS_ROOT else 7)


def test_a_path_the_manifest_does_not_list_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "sub" / "extra").write_text("x")
    error = _refused(tmp_path, manifest)
    assert error.member == "data/crm/sub/extra"
    assert error.detail == "the restored tree holds a path the manifest does not list"


@pytest.mark.parametrize("rel", ["crm/sub/b.txt", "crm/link", "crm/pipe", "crm/sub", "crm"])
def test_a_path_missing_from_the_tree_is_named(tmp_path: Path, rel: str) -> None:
    manifest = _restored(tmp_path)
    path = tmp_path / rel
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    error = _refused(tmp_path, manifest)
    # The first missing path in the manifest's order: a folder's before its files.
    assert error.member == f"data/{rel}"
    assert error.detail == "missing from the restored tree"


def test_as_root_a_missing_device_node_is_named(tmp_path: Path) -> None:
    needs_root("make device nodes")
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "null").unlink()
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == ("data/crm/null", "missing from the restored tree")


def test_not_as_root_a_device_node_may_be_missing(tmp_path: Path) -> None:
    """Only root makes device nodes: a restore by another user cannot have made them."""
    needs_root("act as another user")
    import tempfile

    nobody = 65534
    top = Path(tempfile.mkdtemp(dir="/tmp", prefix="cellvault-not-root-"))
    try:
        manifest = _restored(top)
        (top / "crm" / "null").unlink()
        (top / "crm" / "loop").unlink()
        for path in [top, *top.rglob("*")]:
            os.chown(path, nobody, nobody, follow_symlinks=False)
        os.seteuid(nobody)
        try:
            assert compare_tree(top, manifest) == 7  # the device node is not expected
            (top / "crm" / "a.txt").unlink()
            error = _refused(top, manifest)
        finally:
            os.seteuid(0)
        assert (error.member, error.detail) == ("data/crm/a.txt", "missing from the restored tree")
    finally:
        shutil.rmtree(top)


def test_a_path_of_another_type_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "pipe").unlink()
    (tmp_path / "crm" / "pipe").mkdir(mode=0o640)
    error = _refused(tmp_path, manifest)
    assert error.member == "data/crm/pipe"
    assert error.detail == "restored as a dir, the manifest says fifo"


def test_a_socket_is_of_no_manifest_type(tmp_path: Path) -> None:
    import socket

    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "pipe").unlink()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "crm" / "pipe"))
        error = _refused(tmp_path, manifest)
    assert error.detail == "restored as a other, the manifest says fifo"


def test_a_file_of_another_size_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "sub" / "b.txt").write_bytes(b"b" * 299)
    error = _refused(tmp_path, manifest)
    assert error.member == "data/crm/sub/b.txt"
    assert error.detail == "restored with 299 bytes, the manifest says 300"


def test_a_link_to_another_target_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "link").unlink()
    os.symlink("sub/b.txt", tmp_path / "crm" / "link")
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == (
        "data/crm/link",
        "link target differs from the manifest",
    )


def test_another_mode_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    os.chmod(tmp_path / "crm" / "sub" / "b.txt", 0o644)
    error = _refused(tmp_path, manifest)
    assert error.member == "data/crm/sub/b.txt"
    assert error.detail == "mode 644 differs from the manifest's 600"


def test_a_hard_link_restored_as_a_copy_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    hard = tmp_path / "crm" / "hard"
    hard.unlink()
    hard.write_bytes(b"hello")
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == ("data/crm/hard", "not a hard link of data/crm/a.txt")


def test_a_hard_link_whose_first_name_is_not_there_is_refused(tmp_path: Path) -> None:
    manifest = _restored(tmp_path)
    entry = manifest.get("data/crm/hard")
    assert entry is not None
    manifest.add(Entry(entry.path, "hardlink", 0, 0, target="data/crm/gone"))
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == ("data/crm/hard", "not a hard link of data/crm/gone")


def test_as_root_another_device_number_is_refused(tmp_path: Path) -> None:
    needs_root("make device nodes")
    manifest = _restored(tmp_path)
    (tmp_path / "crm" / "null").unlink()
    os.mknod(tmp_path / "crm" / "null", 0o620 | stat.S_IFCHR, os.makedev(1, 5))
    os.chmod(tmp_path / "crm" / "null", 0o620)
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == (
        "data/crm/null",
        "device number differs from the manifest",
    )
    (tmp_path / "crm" / "null").unlink()
    os.mknod(tmp_path / "crm" / "null", 0o620 | stat.S_IFCHR, os.makedev(1, 3))
    os.chmod(tmp_path / "crm" / "null", 0o620)
    (tmp_path / "crm" / "loop").unlink()
    os.mknod(tmp_path / "crm" / "loop", 0o600 | stat.S_IFBLK, os.makedev(7, 1))
    error = _refused(tmp_path, manifest)
    assert (error.member, error.detail) == (
        "data/crm/loop",
        "device number differs from the manifest",
    )


# -- content checksums, stream scans, meta.json ------------------------------------------


def test_content_checksums_are_the_stores_md5_and_crc64_in_one_pass(tmp_path: Path) -> None:
    check = tmp_path / "check"
    check.write_bytes(b"123456789")
    # CRC-64/XZ (ECMA-182, reflected), as OSS reports it: the standard check value.
    assert content_checksums(check, ["crc64ecma"]) == {"crc64ecma": "11051210869376104954"}
    big = tmp_path / "big"
    data = os.urandom(3 << 20) + b"tail"  # more than one block read
    big.write_bytes(data)
    both = content_checksums(big, ["md5", "crc64ecma", "sha1"])
    assert both["md5"] == hashlib.md5(data, usedforsecurity=False).hexdigest()
    assert set(both) == {"md5", "crc64ecma"}  # a kind not computed here is left out
    assert both["crc64ecma"] != content_checksums(check, ["crc64ecma"])["crc64ecma"]
    assert content_checksums(big, ["md5"]) == {"md5": both["md5"]}
    assert content_checksums(big, ["sha1"]) == {}
    assert content_checksums(tmp_path / "absent", []) == {}  # nothing wanted: nothing read


def test_the_crc64_of_a_file_read_in_blocks_is_that_of_its_bytes(tmp_path: Path) -> None:
    import crcmod

    whole = crcmod.mkCrcFun(0x142F0E1EBA9EA3693, initCrc=0, rev=True, xorOut=(1 << 64) - 1)
    data = os.urandom((2 << 20) + 17)
    (tmp_path / "f").write_bytes(data)
    assert content_checksums(tmp_path / "f", ["crc64ecma"]) == {"crc64ecma": str(whole(data))}


ARCHIVE_ID = ArchiveId.parse(ARCHIVE)
META = ArchiveMeta(
    id=ARCHIVE_ID,
    kind="full",
    backed_at=dt.datetime(2025, 1, 1, 2, 0, tzinfo=dt.UTC),
    host="vm",
    version="0.1.0",
    codec="zstd",
)
SIDECAR = Sidecar(meta=META, data_name=f"{ARCHIVE}.tar.zst", size=0, sha256="0" * 64)


def _tar(*members: tuple[str, bytes | None]) -> bytes:
    """A tar stream of *members* (name, body; ``None``: a folder), ended as tarfile ends one."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if body is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


def _meta_problem(head: bytes) -> str | None:
    def corrupt(message: str, member: str | None = None) -> ArchiveCorrupt:
        return ArchiveCorrupt(message, archive=ARCHIVE, member=member)

    try:
        check_meta(head, SIDECAR, corrupt)
    except ArchiveCorrupt as exc:
        assert exc.member == "meta.json"
        return exc.detail
    return None


def test_meta_json_must_come_first_name_the_archive_and_have_backed_at() -> None:
    good = META.to_json()
    assert _meta_problem(_tar(("meta.json", good), ("data/crm", None))) is None
    first = "meta.json is not the first member"
    assert _meta_problem(_tar(("data/crm", None), ("meta.json", good))) == first
    assert _meta_problem(_tar(("meta.jsoN", good))) == first
    assert _meta_problem(_tar(("meta.json", None))) == first
    assert _meta_problem(_tar()) == first
    assert _meta_problem(b"") == first
    assert _meta_problem(b"not a tar stream at all" * 40) == first
    assert _meta_problem(_tar(("meta.json", good))[:700]) == first  # its body cut off
    assert _meta_problem(_tar(("meta.json", b"{not json"))) == "meta.json is not JSON"
    data = json.loads(good)
    assert _meta_problem(_tar(("meta.json", b"[1, 2]"))) == "meta.json has no backed_at"
    del data["backed_at"]
    assert _meta_problem(_tar(("meta.json", json.dumps(data).encode()))) == (
        "meta.json has no backed_at"
    )
    data = json.loads(good) | {"kind": "weekly"}
    problem = _meta_problem(_tar(("meta.json", json.dumps(data).encode())))
    assert problem is not None and problem.startswith("meta.json is unusable (")
    assert "weekly" in problem
    other = json.loads(good) | {"id": "cell_crm_20250101_020100"}
    assert _meta_problem(_tar(("meta.json", json.dumps(other).encode()))) == (
        "meta.json names archive cell_crm_20250101_020100"
    )


def test_a_tar_ends_with_a_kib_of_zeros() -> None:
    assert Scan(0, "", b"", bytes(1024)).tar_ends
    assert not Scan(0, "", b"", bytes(1023)).tar_ends
    assert not Scan(0, "", b"", bytes(1023) + b"x").tar_ends
    assert not Scan(0, "", b"", b"x" + bytes(1023)).tar_ends


def test_a_scan_reads_every_stored_byte_and_keeps_the_head_and_the_tail() -> None:
    tar = _tar(("meta.json", META.to_json()), ("big", os.urandom(600_000)))
    for name, stored in (
        ("a.tar.zst", zstandard.ZstdCompressor(write_checksum=True).compress(tar)),
        ("a.tar.gz", gzip.compress(tar)),
    ):
        found = scan(name, io.BytesIO(stored))
        assert (found.count, found.sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
        assert found.head == tar[: 256 << 10]  # meta.json lies well within
        assert found.tail == tar[-1024:] and found.tar_ends
        with pytest.raises(DECOMPRESS_ERRORS):
            scan(name, io.BytesIO(stored[:-5]))  # cut inside the checksum (zstd) or the trailer
    small = zstandard.ZstdCompressor(write_checksum=True).compress(_tar(("meta.json", b"{}")))
    found = scan("a.tar.zst", io.BytesIO(small))
    assert found.head == _tar(("meta.json", b"{}")) and found.tar_ends
    # Bytes after the last frame are not a zstd frame: refused, not ignored.
    with pytest.raises(zstandard.ZstdError):
        scan("a.tar.zst", io.BytesIO(small + b"garbage!"))
    # A stream ended quietly at a frame's edge, its last frame whole: the frame walk refuses a cut.
    two = small + zstandard.ZstdCompressor(write_checksum=True).compress(b"\0" * 1024)
    with pytest.raises(EOFError):
        scan("a.tar.zst", io.BytesIO(two[:-4]))


def _frame(*, single: bool, dict_code: int, fcs_code: int, checksum: bool) -> bytes:
    """A zstd frame built by hand (RFC 8878): each header field size, a raw, an RLE and a compressed block.

    The frame walk follows the structure alone, so the block contents need not decompress.
    """
    fhd = (fcs_code << 6) | (0x20 if single else 0) | (0x04 if checksum else 0) | dict_code
    out = (0xFD2FB528).to_bytes(4, "little") + bytes([fhd])
    out += b"" if single else b"\x48"  # the window descriptor
    out += b"\x07" * (0, 1, 2, 4)[dict_code]
    out += b"\x09" * (1 if single else 0, 2, 4, 8)[fcs_code]
    for last, kind, size, body in ((0, 0, 5, b"raw!!"), (0, 1, 3000, b"r"), (1, 2, 6, b"zstd!!")):
        out += (last | kind << 1 | size << 3).to_bytes(3, "little") + body
    return out + (b"\xab\xcd\xef\x01" if checksum else b"")


def test_the_zstd_frame_walk_reads_every_header_field_and_block_type() -> None:
    from cellvault.integrity import ZstdFrames

    def walk(data: bytes, step: int) -> None:
        frames = ZstdFrames()
        for i in range(0, len(data), step):
            frames.feed(data[i : i + step])
        frames.finish()

    for single in (False, True):
        for dict_code in range(4):
            for fcs_code in range(4):
                for checksum in (False, True):
                    frame = _frame(
                        single=single, dict_code=dict_code, fcs_code=fcs_code, checksum=checksum
                    )
                    for step in (1, 3, len(frame)):
                        walk(frame + frame, step)
                    for cut in range(1, len(frame)):
                        with pytest.raises(EOFError):
                            walk(frame[:cut], 7)
                        with pytest.raises(EOFError):
                            walk(frame + frame[:cut], 7)
    reserved = _frame(single=True, dict_code=0, fcs_code=0, checksum=False)[:-9]
    reserved += (1 | 3 << 1 | 2 << 3).to_bytes(3, "little") + b"??"
    with pytest.raises(zstandard.ZstdError, match="reserved type"):
        walk(reserved, 4)


@pytest.mark.parametrize(
    "length",
    [
        0,
        100,
        1023,
        1024,
        1500,
        (256 << 10) - 1,
        (256 << 10) + 1,
        (1 << 20) + 1500,
        3 * (1 << 20) + 17,
    ],
)
def test_a_scan_keeps_the_first_and_the_last_bytes_of_the_stream(length: int) -> None:
    """The head (256 KiB) and the tail (1,024 bytes) whatever the blocks' edges, a short last one too."""
    import random

    import zstandard

    from cellvault.integrity import scan

    data = random.Random(length).randbytes(length)
    raw = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    found = scan("x.tar.zst", io.BytesIO(raw))
    assert found.head == data[: 256 << 10]
    assert found.tail == data[-1024:]
    assert (found.count, found.sha256) == (len(raw), hashlib.sha256(raw).hexdigest())


def test_the_zstd_frame_walk_counts_frames_and_says_what_is_wrong() -> None:
    from cellvault.integrity import ZstdFrames

    frame = _frame(single=False, dict_code=1, fcs_code=2, checksum=True)
    plain = _frame(single=True, dict_code=0, fcs_code=0, checksum=False)
    frames = ZstdFrames()
    frames.feed(frame + plain + frame)
    frames.finish()
    assert frames.frames == 3
    # A skippable frame (magic 0x184D2A5?, a length, that many bytes) is passed over, not counted.
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"12345"
    frames = ZstdFrames()
    frames.feed(skippable + plain)
    frames.finish()
    assert frames.frames == 1

    with pytest.raises(EOFError) as eof:
        ZstdFrames().finish()
    assert str(eof.value) == "no zstd frame in the data"
    frames = ZstdFrames()
    frames.feed(skippable)
    with pytest.raises(EOFError) as eof:
        frames.finish()
    assert str(eof.value) == "no zstd frame in the data"
    for cut in (1, 4, 5, len(plain) - 1):
        frames = ZstdFrames()
        frames.feed(plain + plain[:cut])
        with pytest.raises(EOFError) as eof:
            frames.finish()
        assert str(eof.value) == "the data ends inside a zstd frame (truncated)"
    with pytest.raises(zstandard.ZstdError) as bad:
        ZstdFrames().feed(b"garbage!")
    assert str(bad.value) == "not a zstd frame (magic 0x62726167)"
    reserved = plain[:-9] + (1 | 3 << 1 | 2 << 3).to_bytes(3, "little") + b"??"
    with pytest.raises(zstandard.ZstdError) as bad:
        ZstdFrames().feed(reserved)
    assert str(bad.value) == "a zstd block of the reserved type"
