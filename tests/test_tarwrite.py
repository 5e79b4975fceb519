"""The packer's own tar writer: the same bytes as tarfile's PAX_FORMAT, read by stock tools.

``cellvault.pack`` writes tar headers itself (tarfile's per-member overhead was
half of a backup's Python calls). These tests hold it to tarfile's output byte
for byte, on edge cases and on whole archives, and check GNU tar reads them.
"""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from cellvault.tarwrite import TarWriter as _TarWriter
from cellvault.tarwrite import file_header, pax_mtime, tar_header

from .archive_helpers import archive_files, make_vault
from .test_stock_tools import need

# What TarFile.addfile writes: TarInfo.tobuf with the file system encoding.
ENCODING, ERRORS = "utf-8", "surrogateescape"

LONG = "d" * 60 + "/" + "e" * 60 + "/" + "f" * 30
BAD = os.fsdecode(b"bad-\xff\xfe-name")  # not UTF-8: surrogate escapes
NS = 1_700_000_000_123_456_789


def tarinfo(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    *,
    mode: int = 0o644,
    uid: int = 1000,
    gid: int = 1000,
    size: int = 0,
    mtime: float = 1_700_000_000,
    link: str = "",
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid = uid
    info.gid = gid
    info.size = size
    info.mtime = mtime
    info.linkname = link
    info.uname = info.gname = ""
    return info


def ours(info: tarfile.TarInfo) -> bytes:
    return tar_header(
        info.name, info.type, info.mode, info.uid, info.gid, info.size, info.mtime, info.linkname
    )


def theirs(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, ENCODING, ERRORS)


EDGE_CASES = {
    "plain": tarinfo("data/crm/a.txt", size=5),
    "100 chars": tarinfo("n" * 100),
    "101 chars": tarinfo("n" * 101),
    "long path": tarinfo(LONG + "/file.txt", size=3),
    "dir without slash": tarinfo("data/crm/dir", tarfile.DIRTYPE, mode=0o755),
    "dir with slash": tarinfo("data/crm/dir/", tarfile.DIRTYPE, mode=0o755),
    "dir of 100 chars": tarinfo("d" * 100, tarfile.DIRTYPE),
    "non-ascii": tarinfo("data/crm/数据/表.csv", size=8),
    "accents": tarinfo("data/crm/café", size=1),
    "surrogate escapes": tarinfo(f"data/crm/{BAD}", size=1),
    "long and non-ascii": tarinfo("é" * 120),
    "symlink": tarinfo("data/crm/link", tarfile.SYMTYPE, mode=0o777, link="conf/app.ini"),
    "long link target": tarinfo("data/crm/l", tarfile.SYMTYPE, link="t/" * 80),
    "link target of 100": tarinfo("data/crm/l", tarfile.SYMTYPE, link="t" * 100),
    "non-ascii link target": tarinfo("data/crm/l", tarfile.SYMTYPE, link="数据/表.csv"),
    "undecodable link target": tarinfo("data/crm/l", tarfile.SYMTYPE, link=BAD),
    "undecodable name and link": tarinfo(BAD, tarfile.SYMTYPE, link=BAD + "/x"),
    "huge uid": tarinfo("u", uid=8**7),
    "uid at the limit": tarinfo("u", uid=8**7 - 1),
    "huge gid": tarinfo("g", gid=2**32 - 2),
    "uid and gid 0": tarinfo("z", uid=0, gid=0),
    "huge size": tarinfo("big.img", size=8**11),
    "size at the limit": tarinfo("big.img", size=8**11 - 1),
    "size 20 GiB": tarinfo("big.img", size=20 << 30),
    "mode with file type bits": tarinfo("m", mode=0o100755),
    "setuid and sticky": tarinfo("m", mode=0o7777),
    "negative mtime": tarinfo("old", mtime=-1),
    "negative fractional mtime": tarinfo("old", mtime=-1.5),
    "fractional mtime": tarinfo("f", mtime=1_700_000_000.5),
    "nanosecond mtime": tarinfo("f", mtime=NS / 1e9),
    "mtime rounding up to the limit": tarinfo("f", mtime=8**11 - 0.4),
    "far future mtime": tarinfo("f", mtime=8**11),
    "far future fractional mtime": tarinfo("f", mtime=8**11 + 0.25),
    "zero mtime": tarinfo("f", mtime=0),
    "everything at once": tarinfo(
        BAD + "é" * 100, tarfile.SYMTYPE, uid=2**40, gid=2**33, mtime=-12.75, link="x" * 200
    ),
}


@pytest.mark.parametrize("info", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_header_is_tarfiles_pax_header(info: tarfile.TarInfo) -> None:
    assert ours(info) == theirs(info)


def random_name(rnd: random.Random) -> str:
    alphabet = "abcXYZ019._- /é数\udcff"
    return "".join(rnd.choice(alphabet) for _ in range(rnd.choice([1, 5, 99, 100, 101, 300])))


def test_random_headers_are_tarfiles() -> None:
    rnd = random.Random(11)
    for _ in range(3000):
        kind = rnd.choice([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE])
        ns = rnd.choice([0, -(10**9) * rnd.randrange(1, 10**9), rnd.randrange(-(2**40), 2**62)])
        mtime = ns / 1e9 if ns % 10**9 else ns // 10**9
        info = tarinfo(
            random_name(rnd),
            kind,
            mode=rnd.randrange(0, 0o177777),
            uid=rnd.choice([0, 1000, 8**7 - 1, 8**7, rnd.randrange(2**64)]),
            gid=rnd.choice([0, 1000, 8**7, rnd.randrange(2**32)]),
            size=rnd.choice([0, 1, 511, 512, 8**11 - 1, 8**11, rnd.randrange(2**50)]),
            mtime=mtime,
            link=random_name(rnd) if kind == tarfile.SYMTYPE else "",
        )
        assert ours(info) == theirs(info), info.name


def write_both(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> tuple[bytes, bytes]:
    mine = io.BytesIO()
    writer = _TarWriter(mine)
    stock = io.BytesIO()
    with tarfile.open(fileobj=stock, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            body = None if data is None else io.BytesIO(data)
            writer.addfile(info, body)
            tar.addfile(info, None if data is None else io.BytesIO(data))
    writer.close()
    return mine.getvalue(), stock.getvalue()


def test_whole_stream_with_data_and_end_blocks_is_tarfiles() -> None:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for i, size in enumerate([0, 1, 511, 512, 513, 10_000, (1 << 20) + 3]):
        data = random.Random(i).randbytes(size)
        members.append((tarinfo(f"f{i}", size=size, mtime=NS / 1e9), data))
    members.append((tarinfo("d", tarfile.DIRTYPE), None))
    members.append((tarinfo("l", tarfile.SYMTYPE, link="f1"), None))
    # A field tar_header does not write: the writer falls back to tarfile's header.
    named = tarinfo("owned", size=2)
    named.uname, named.gname = "postgres", "postgres"
    members.append((named, b"ab"))
    mine, stock = write_both(members)
    assert mine == stock
    assert len(mine) % tarfile.RECORDSIZE == 0


def test_short_data_is_an_error_as_with_tarfile() -> None:
    writer = _TarWriter(io.BytesIO())
    with pytest.raises(OSError, match="unexpected end of data"):
        writer.addfile(tarinfo("f", size=10), io.BytesIO(b"12345"))


def decompressed(path: Path) -> bytes:
    with open(path, "rb") as f:
        reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        return reader.read()


def re_encoded(raw: bytes) -> bytes:
    """The archive *raw* written again by tarfile from what tarfile reads in it."""
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as dst,
    ):
        for info in src:
            copy = tarinfo(
                info.name,
                info.type,
                mode=info.mode,
                uid=info.uid,
                gid=info.gid,
                size=info.size,
                mtime=info.mtime,
                link=info.linkname,
            )
            # The packer writes an mtime's exact nanoseconds (tarfile would round a
            # float): keep the records as read, in their order.
            keep = ("path", "linkpath", "uid", "gid", "size", "mtime")
            copy.pax_headers = {k: v for k, v in info.pax_headers.items() if k in keep}
            dst.addfile(copy, src.extractfile(info) if info.isreg() else None)
    return out.getvalue()


@pytest.fixture
def odd_tree(tmp_path: Path) -> Path:
    """A cell with the names, links, owners and times that need PAX headers."""
    root = tmp_path / "cells" / "crm"
    deep = root / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / ("f" * 110)).write_text("long path\n")
    (root / "数据").mkdir()
    (root / "数据" / "表.csv").write_text("a,b\n")
    (root / os.fsdecode(b"bad-\xff-name")).write_bytes(b"undecodable name\n")
    (root / "long-link").symlink_to("x/" * 80)
    (root / "utf-link").symlink_to("数据/表.csv")
    (root / "big.bin").write_bytes(random.Random(1).randbytes(3 << 20))
    (root / "empty").write_bytes(b"")
    (root / "owned").write_text("owned by someone else\n")
    if os.geteuid() == 0:
        os.chown(root / "owned", 8**7 + 5, 4_000_000_000)
    times = {
        "empty": -1_500_000_000,  # before 1970, fractional
        "big.bin": NS,
        "owned": 1_600_000_000 * 10**9,  # whole seconds: no PAX mtime
        "数据": 5 * 10**17 + 1,
    }
    for name, ns in times.items():
        os.utime(root / name, ns=(ns, ns), follow_symlinks=False)
    return root


def test_packed_archive_is_what_tarfile_would_write(tmp_path: Path, odd_tree: Path) -> None:
    vault = make_vault(tmp_path / "backup", [odd_tree])
    assert vault.backup().ok
    (data,) = archive_files(tmp_path / "backup")
    raw = decompressed(data)
    assert raw == re_encoded(raw)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        names = [info.name for info in tar]
    assert "data/crm/" + os.fsdecode(b"bad-\xff-name") in names
    assert names[0] == "meta.json"
    assert names[-1] == "manifest.json"


def test_gnu_tar_extracts_the_odd_tree(tmp_path: Path, odd_tree: Path) -> None:
    tar, zstd = need("tar"), need("zstd")
    vault = make_vault(tmp_path / "backup", [odd_tree])
    assert vault.backup().ok
    (data,) = archive_files(tmp_path / "backup")
    plain = tmp_path / "plain.tar"
    subprocess.run([zstd, "-q", "-d", str(data), "-o", str(plain)], check=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tar, "-x", "-f", str(plain), "-C", str(out)], check=True)
    got = out / "data" / "crm"
    for path in odd_tree.rglob("*"):
        rel = path.relative_to(odd_tree)
        twin = got / rel
        if path.is_symlink():
            assert os.readlink(twin) == os.readlink(path), rel
        elif path.is_file():
            assert twin.read_bytes() == path.read_bytes(), rel
        st, twin_st = path.lstat(), twin.lstat()
        if not path.is_symlink():
            # GNU tar keeps what the PAX header says, to the nanosecond it can.
            assert abs(twin_st.st_mtime_ns - st.st_mtime_ns) < 1_000, rel
    # tar -t lists the same names as tarfile (the PAX records are read, not skipped).
    listed = subprocess.run(
        [tar, "-t", "--quoting-style=literal", "-f", str(plain)], check=True, capture_output=True
    ).stdout.splitlines()
    assert os.fsencode(f"data/crm/{'d' * 60}/{'e' * 60}/{'f' * 110}") in listed
    assert b"data/crm/bad-\xff-name" in listed


def test_a_plain_file_s_header_is_tar_header_s() -> None:
    rnd = random.Random(15)
    for _ in range(5000):
        name = random_name(rnd)
        ns = rnd.choice(
            [
                0,
                1_700_000_000 * 10**9,
                rnd.randrange(0, 2**62),
                rnd.randrange(0, 10**9) + 1_700_000_000 * 10**9,
                10**9 * (8**11 - 1) + rnd.randrange(10**9),
                10**9 * (8**11 - 2) + 999_999_999,
                10**9 * 8**11 + 1,
                -(10**9) * rnd.randrange(1, 10**9) - rnd.randrange(10**9),
                rnd.randrange(1, 10**9),
            ]
        )
        uid = rnd.choice([0, 1000, 8**7 - 1, 8**7, rnd.randrange(2**64)])
        gid = rnd.choice([0, 1000, 8**7 - 1, 8**7, rnd.randrange(2**32)])
        size = rnd.choice([0, 1, 511, 512, 8**11 - 1, 8**11, rnd.randrange(2**50)])
        mode = rnd.randrange(0, 0o177777)
        expected = tar_header(name, tarfile.REGTYPE, mode, uid, gid, size, pax_mtime(ns))
        assert file_header(name, mode, uid, gid, size, ns) == expected, (name, ns)
