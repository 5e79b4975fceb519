"""Damaged archives: the tar reader refuses them with ArchiveCorrupt, and writes nothing outside staging.

Real archives are written by :class:`cellvault.pack.Packer` (zstd and gzip),
then damaged either in the decompressed tar stream (and compressed again, so
the reader meets broken tar structure rather than a codec error) or in the
compressed bytes. With ``rehash`` the sidecar is rewritten to match the
damaged bytes, so that only the archive's structure and its manifest can
give the damage away. Whatever the damage, :func:`verify_archive` and a
restore through :class:`StagedTree` either succeed or raise
:class:`ArchiveCorrupt` (of which :class:`UnsafeArchive` is a subclass).
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import io
import os
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

import attrs
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cellvault import ArchiveCorrupt, ArchiveId, Cell, Sidecar
from cellvault.codec import get_codec
from cellvault.extract import ArchiveStream, StagedTree, verify_archive
from cellvault.manifest import Manifest
from cellvault.pack import Packer
from tests.archive_helpers import snapshot

from .test_tarread import decompressing_threads

IDENT = ArchiveId("crm", dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC))


@attrs.frozen(repr=False)
class Packed:
    codec: str
    src: Path
    sidecar: Sidecar
    manifest: Manifest
    stored: bytes
    #: The decompressed tar stream, and where each of its header blocks starts.
    tar: bytes
    headers: tuple[int, ...]

    def __repr__(self) -> str:
        return f"<{self.codec} archive of {len(self.tar)} tar bytes>"

    def compress(self, tar: bytes) -> bytes:
        if self.codec == "zstd":
            return zstandard.ZstdCompressor().compress(tar)
        return gzip.compress(tar, compresslevel=1, mtime=0)


def make_cell(root: Path) -> Path:
    """Small and large files, an empty one, nesting, long and non-ASCII names, links."""
    rnd = random.Random(11)
    (root / "conf" / "deep" / "er").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    (root / "conf" / "app.ini").write_text("[app]\nname = crm\n" * 20)
    (root / "conf" / "deep" / "er" / "ünïcode ñame.txt").write_text("ü" * 300)
    (root / "conf" / "secret.key").write_bytes(rnd.randbytes(64))
    (root / "conf" / "secret.key").chmod(0o400)
    (root / "empty").write_bytes(b"")
    (root / ("long-" + "n" * 120)).write_bytes(b"a name longer than a ustar header holds\n")
    # Over 1 MiB: read in several blocks, across the decompression thread's chunks.
    block = rnd.randbytes(4096)
    (root / "big.bin").write_bytes(block * 300 + rnd.randbytes(100))
    (root / "current").symlink_to("conf/app.ini")
    (root / "conf" / "up").symlink_to("../empty")
    return root


def pack(tmp: Path, codec: str) -> Packed:
    src = make_cell(tmp / "cells" / "crm")
    result = Packer(
        cell=Cell("crm", [src]),
        ident=IDENT,
        codec=get_codec(codec),
        spool=tmp / "spool" / "run",
        host="test",
        version="0",
    ).pack()
    stored = result.data_path.read_bytes()
    if codec == "zstd":
        tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(stored)).read()
    else:
        tar = gzip.decompress(stored)
    headers = []
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
        for info in archive:
            headers.append(info.offset)
            if info.offset_data - info.offset > 512:  # a pax header block, then the member's
                headers.append(info.offset_data - 512)
    sidecar = Sidecar(
        meta=result.meta,
        data_name=result.data_path.name,
        size=result.size,
        sha256=result.sha256,
        files=len(result.manifest),
    )
    return Packed(codec, src, sidecar, result.manifest, stored, tar, tuple(headers))


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Packed]:
    return {codec: pack(tmp_path_factory.mktemp(codec), codec) for codec in ("zstd", "gzip")}


def with_sidecar(archive: Packed, stored: bytes, rehash: bool) -> Sidecar:
    if not rehash:
        return archive.sidecar
    return attrs.evolve(
        archive.sidecar, size=len(stored), sha256=hashlib.sha256(stored).hexdigest()
    )


def check_both(archive: Packed, stored: bytes, sidecar: Sidecar) -> None:
    """Verify and restore *stored*; only ArchiveCorrupt may come out, nothing lands outside.

    Damaged bytes under the original sidecar always fail verify (the sidecar's
    sha256 no longer matches); damage the sidecar was rehashed for may pass
    only if it changed nothing the archive holds, and then the restore
    brings back the cell as packed.
    """
    verified = True
    try:
        verify_archive(io.BytesIO(stored), sidecar, "fuzz")
    except ArchiveCorrupt as exc:
        assert exc.archive == str(IDENT)
        verified = False
    if stored != archive.stored and sidecar.sha256 == archive.sidecar.sha256:
        assert not verified, "verify passed damaged bytes its sidecar's sha256 does not match"
    scratch = Path(tempfile.mkdtemp(prefix="cv-fuzz-"))
    try:
        staging = scratch / "staging"
        tree = StagedTree(staging=staging, manifest=archive.manifest, archive=str(IDENT))
        try:
            tree.prepare()
            tree.take(ArchiveStream(io.BytesIO(stored), sidecar, "fuzz"))
            tree.finish()
        except ArchiveCorrupt as exc:
            assert exc.archive == str(IDENT)
            assert not verified, f"verify passed what the restore refused: {exc}"
        else:
            # Accepted: then it is the cell as it was packed, byte for byte.
            assert snapshot(staging / "crm") == snapshot(archive.src)
        assert os.listdir(scratch) == ["staging"]
        assert not decompressing_threads()  # none outlives the call, whatever happened
    finally:
        for dirpath, _, _ in os.walk(scratch):
            os.chmod(dirpath, 0o700)  # read-only folders restored from the archive
        shutil.rmtree(scratch)


def test_undamaged_archives_verify_and_restore(packed: dict[str, Packed]) -> None:
    for archive in packed.values():
        meta, manifest, members = verify_archive(
            io.BytesIO(archive.stored), archive.sidecar, "fuzz"
        )
        assert meta.id == IDENT
        assert members == len(manifest) == len(archive.manifest)
        assert len(archive.headers) > members  # long names gave pax headers too
        check_both(archive, archive.stored, archive.sidecar)


# One damage: (kind, position, a byte or the bytes inserted). Positions are drawn
# anywhere, or within the 1 KiB after a header, where the structure is.
Damage = tuple[str, int, bytes]


@st.composite
def damages(draw: st.DrawFn, size: int, headers: tuple[int, ...] = ()) -> list[Damage]:
    out: list[Damage] = []
    for _ in range(draw(st.integers(1, 3))):
        if headers and draw(st.booleans()):
            pos = draw(st.sampled_from(headers)) + draw(st.integers(0, 1023))
        else:
            pos = draw(st.integers(0, size - 1))
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        payload = draw(
            st.binary(min_size=1, max_size=600)
            if kind == "insert"
            else st.sampled_from([b"\x00", b"\xff", b"0", b"7", b"/", b".", b" ", b"\n", b"="])
            if kind == "set"
            else st.binary(min_size=1, max_size=1)
        )
        out.append((kind, pos, payload))
    return out


def damage(data: bytes, changes: list[Damage]) -> bytes:
    buf = bytearray(data)
    for kind, pos, payload in changes:
        pos = min(pos, max(len(buf) - 1, 0))
        if kind == "flip" and buf:
            buf[pos] ^= payload[0] or 0x01
        elif kind == "set" and buf:
            buf[pos] = payload[0]
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = payload
        elif kind == "delete":
            del buf[pos : pos + 1 + payload[0] % 600]
    return bytes(buf)


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
@FUZZ
@given(data=st.data(), rehash=st.booleans())
def test_damaged_tar_stream_is_refused_cleanly(
    packed: dict[str, Packed], codec: str, data: st.DataObject, rehash: bool
) -> None:
    archive = packed[codec]
    changes = data.draw(damages(len(archive.tar), archive.headers))
    stored = archive.compress(damage(archive.tar, changes))
    check_both(archive, stored, with_sidecar(archive, stored, rehash))


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
@FUZZ
@given(data=st.data(), rehash=st.booleans())
def test_damaged_compressed_bytes_are_refused_cleanly(
    packed: dict[str, Packed], codec: str, data: st.DataObject, rehash: bool
) -> None:
    archive = packed[codec]
    stored = damage(archive.stored, data.draw(damages(len(archive.stored))))
    check_both(archive, stored, with_sidecar(archive, stored, rehash))


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_tar_stream_cut_at_every_header_is_refused(packed: dict[str, Packed], codec: str) -> None:
    archive = packed[codec]
    cuts = sorted({c for h in archive.headers for c in (h, h + 1, h + 100, h + 511, h + 512)})
    for cut in cuts:
        stored = archive.compress(archive.tar[:cut])
        sidecar = with_sidecar(archive, stored, True)
        with pytest.raises(ArchiveCorrupt):
            verify_archive(io.BytesIO(stored), sidecar, "fuzz")
        check_both(archive, stored, sidecar)
