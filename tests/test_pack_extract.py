"""Archive format v1, packing and reading back: layout, integrity, bounded memory, crashes."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

import cellvault
import cellvault.readahead as readahead
from cellvault import ArchiveCorrupt, ArchiveId, ConfigError, Manifest
from cellvault.codec import get_codec
from cellvault.extract import ArchiveStream, StagedTree, verify_archive
from cellvault.pack import Packer, PackResult
from cellvault.readahead import FileSource as _FileSource
from cellvault.spool import clear_stale_spool

from .archive_helpers import (
    TickingClock,
    archive_files,
    make_vault,
    read_members,
    sidecar_of,
    snapshot,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A small cell: files, an empty file and directory, a link, an incompressible file."""
    root = tmp_path / "cells" / "crm"
    (root / "db" / "empty-dir").mkdir(parents=True)
    (root / "conf").mkdir()
    (root / "conf" / "app.ini").write_text("[app]\nname = crm\n")
    (root / "conf" / "secret.key").write_bytes(b"k" * 32)
    (root / "conf" / "secret.key").chmod(0o600)
    (root / "db" / "empty").write_bytes(b"")
    (root / "db" / "blob.bin").write_bytes(random.Random(7).randbytes(2_000_000))
    (root / "current").symlink_to("conf/app.ini")
    return root


# -- layout ---------------------------------------------------------------------------------


def test_meta_first_manifest_last(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert report.ok, report.cells[0].error
    (data,) = archive_files(tmp_path / "backup")
    assert data.name == f"{report.cells[0].archive}.tar.zst"
    members = read_members(data)
    names = [info.name for info, _ in members]
    assert names[0] == "meta.json"
    assert names[-1] == "manifest.json"
    assert names.count("meta.json") == names.count("manifest.json") == 1
    assert set(names[1:-1]) == {
        "data/crm",
        "data/crm/conf",
        "data/crm/conf/app.ini",
        "data/crm/conf/secret.key",
        "data/crm/current",
        "data/crm/db",
        "data/crm/db/blob.bin",
        "data/crm/db/empty",
        "data/crm/db/empty-dir",
    }
    assert all(info.name.startswith("data/crm") for info, _ in members[1:-1])

    meta = json.loads(members[0][1] or b"")
    assert meta["format"] == 1
    assert meta["cell"] == "crm"
    assert meta["id"] == report.cells[0].archive
    assert meta["kind"] == "full"
    assert meta["parent"] is None
    assert meta["backed_at"].endswith("Z")
    backed_at = dt.datetime.fromisoformat(meta["backed_at"].replace("Z", "+00:00"))
    assert backed_at.utcoffset() == dt.timedelta(0)
    assert abs(dt.datetime.now(dt.UTC) - backed_at) < dt.timedelta(minutes=5)
    assert meta["host"] == socket.gethostname()
    assert meta["cellvault_version"] == cellvault.__version__
    assert meta["codec"] == "zstd"
    assert meta["roots"] == {"crm": str(src)}

    # Member data is what the manifest says, and what the source holds.
    manifest = Manifest.from_json(members[-1][1] or b"")
    for info, payload in members[1:-1]:
        entry = manifest.get(info.name)
        assert entry is not None
        if info.isreg():
            assert payload is not None
            assert entry.sha256 == hashlib.sha256(payload).hexdigest()
            assert payload == (src / info.name.removeprefix("data/crm/")).read_bytes()
            assert entry.size == len(payload)
        assert info.mode == entry.mode
    assert manifest.get("data/crm/current").target == "conf/app.ini"  # type: ignore[union-attr]


def test_sidecar_beside_archive_matches_it(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    ident = report.cells[0].archive
    folder = tmp_path / "backup" / "crm"
    assert sorted(p.name for p in folder.iterdir()) == [
        f"{ident}.json",
        f"{ident}.manifest.json.zst",
        f"{ident}.tar.zst",
    ]
    data = folder / f"{ident}.tar.zst"
    side = sidecar_of(data)
    raw = data.read_bytes()
    assert side["data"] == data.name
    assert side["size"] == len(raw) == report.cells[0].archive_size
    assert side["sha256"] == hashlib.sha256(raw).hexdigest()
    assert side["id"] == ident
    assert side["backed_at"].endswith("Z")
    assert side["files"] == 9  # every path of the manifest
    assert side["bytes_read"] == sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file() and not p.is_symlink()
    )
    # Committed: listed, and it verifies.
    assert [a.id for a in vault.list()] == [ident]
    assert vault.verify().ok


def test_gzip_codec_writes_tar_gz_that_round_trips(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src], codec="gzip")
    report = vault.backup()
    assert report.ok, report.cells[0].error
    (data,) = archive_files(tmp_path / "backup")
    assert data.name.endswith(".tar.gz")
    assert data.read_bytes()[:2] == b"\x1f\x8b"
    members = read_members(data)
    assert members[0][0].name == "meta.json"
    assert json.loads(members[0][1] or b"")["codec"] == "gzip"
    assert vault.verify().ok
    restored = vault.restore(into=tmp_path / "out")
    assert restored.ok, restored.error
    assert snapshot(tmp_path / "out" / "crm" / "crm") == snapshot(src)


def test_gzip_level_zero_is_stored_not_default(tmp_path: Path, src: Path) -> None:
    sizes = {}
    for level in (0, 9):
        backup = tmp_path / f"backup{level}"
        vault = make_vault(backup, [src], codec="gzip", level=level)
        assert vault.backup().ok
        (data,) = archive_files(backup)
        sizes[level] = data.stat().st_size
        assert vault.verify().ok
    text = (src / "conf" / "app.ini").read_bytes()
    # Level 0 stores: the text is in the archive as it is; level 9 compresses it away.
    assert text in (archive_files(tmp_path / "backup0")[0]).read_bytes()
    assert sizes[0] > sizes[9]


@pytest.mark.parametrize(
    ("codec", "level"), [("gzip", 10), ("gzip", -1), ("zstd", 23), ("zstd", "3"), ("lz4", None)]
)
def test_bad_codec_or_level_is_a_config_error(codec: str, level: object) -> None:
    with pytest.raises(ConfigError):
        get_codec(codec, level)  # type: ignore[arg-type]


def test_zstd_levels_including_fast_ones(tmp_path: Path, src: Path) -> None:
    for level in (-5, 1, 19):
        backup = tmp_path / f"backup{level}"
        vault = make_vault(backup, [src], level=level)
        assert vault.backup().ok
        assert vault.verify().ok


def test_sockets_are_skipped_with_a_warning_and_fifos_kept(tmp_path: Path, src: Path) -> None:
    os.mkfifo(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock_path = src / "db" / "s.sock"
    sock.bind(str(sock_path))
    try:
        vault = make_vault(tmp_path / "backup", [src])
        report = vault.backup()
    finally:
        sock.close()
    assert report.ok, report.cells[0].error
    warnings = report.cells[0].warnings
    assert len(warnings) == 1
    assert str(sock_path) in warnings[0] and "socket" in warnings[0] and "skipped" in warnings[0]
    names = [info.name for info, _ in read_members(archive_files(tmp_path / "backup")[0])]
    assert "data/crm/pipe" in names
    assert "data/crm/db/s.sock" not in names
    assert vault.verify().ok
    out = vault.restore(into=tmp_path / "out")
    assert out.ok
    assert stat.S_ISFIFO((tmp_path / "out" / "crm" / "crm" / "pipe").lstat().st_mode)
    assert not (tmp_path / "out" / "crm" / "crm" / "db" / "s.sock").exists()


def test_exclude_patterns(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    for rel in [
        "keep.txt",
        "a.tmp",
        "sub/b.tmp",
        "sub/keep.log",
        "cache/x",
        "sub/cache/y",
        "logs/old.gz",
        "logs/new.log",
        "sub/logs/other.gz",
    ]:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(rel)
    vault = make_vault(tmp_path / "backup", [src], exclude=["*.tmp", "cache", "logs/*.gz"])
    assert vault.backup().ok
    names = {info.name for info, _ in read_members(archive_files(tmp_path / "backup")[0])}
    files = {n.removeprefix("data/crm/") for n in names if n.startswith("data/crm/")}
    assert files == {
        "keep.txt",
        "sub",
        "sub/keep.log",
        "logs",
        "logs/new.log",
        "sub/logs",
        "sub/logs/other.gz",  # "logs/*.gz" is anchored at the cell path
    }
    assert vault.verify().ok


def test_one_stamp_per_run_and_new_ids_each_run(tmp_path: Path) -> None:
    paths = {}
    for name in ("crm", "billing", "auth-svc"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
        paths[name] = [tmp_path / name]
    # The real clock: two runs in the same second must still get different ids.
    vault = make_vault(tmp_path / "backup", paths, clock=cellvault.archive.utcnow)
    first = vault.backup()
    second = vault.backup()
    assert first.ok and second.ok
    for report in (first, second):
        assert {ArchiveId.parse(c.archive or "").stamp for c in report.cells} == {report.stamp}
    firsts = {c.archive for c in first.cells}
    seconds = {c.archive for c in second.cells}
    assert not firsts & seconds
    assert second.stamp > first.stamp
    assert len(vault.list()) == 6


def test_file_source_pads_a_file_that_shrank() -> None:
    seen: list[int] = []
    source = _FileSource(io.BytesIO(b"12345"), 8, seen.append)
    data = source.read(6) + source.read(6) + source.read(6)
    assert data == b"12345\0\0\0"
    assert source.short
    assert sum(seen) == 8
    assert source.digest.hexdigest() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("whole", [False, True], ids=["kernel-read-ahead", "read-whole"])
def test_pack_warns_for_a_file_that_shrinks_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    (src / "log").write_bytes(b"x" * 1000)
    if whole:
        # Small files are read whole by the read-ahead thread, right after their open.
        real_open = readahead.open_scanned_fd

        def shrinking_open(path: str, st: Any = None) -> Any:
            opened = real_open(path, st)
            os.truncate(src / "log", 10)  # truncated between the open and the read
            return opened

        monkeypatch.setattr(readahead, "open_scanned_fd", shrinking_open)
    else:
        monkeypatch.setattr(readahead, "READ_WHOLE", 0)
        real_read = _FileSource.read

        def shrinking(self: _FileSource, n: int = -1) -> bytes:
            os.truncate(src / "log", 10)  # truncated while it is read
            return real_read(self, n)

        monkeypatch.setattr(_FileSource, "read", shrinking)
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert report.ok
    assert any("shrank" in w and str(src / "log") in w for w in report.cells[0].warnings)
    monkeypatch.undo()
    (data,) = archive_files(tmp_path / "backup")
    members = {info.name: body for info, body in read_members(data)}
    assert members["data/crm/log"] == b"x" * 10 + bytes(990)
    assert vault.verify().ok  # the padded file is what the manifest says


def test_missing_cell_path_fails_the_pack(tmp_path: Path) -> None:
    vault = make_vault(tmp_path / "backup", [tmp_path / "nope"])
    report = vault.backup()
    assert not report.ok
    assert report.cells[0].stage == "pack"
    assert "does not exist" in (report.cells[0].error or "")
    assert vault.list() == []


# -- integrity -----------------------------------------------------------------------------


def flip_inside(data_path: Path, needle: bytes) -> None:
    """Flip one byte of the stored archive inside the stored copy of *needle*."""
    raw = bytearray(data_path.read_bytes())
    at = raw.find(needle)
    assert at > 0, "the needle is not stored verbatim"
    raw[at + len(needle) // 2] ^= 0x5A
    data_path.write_bytes(bytes(raw))


def without_zstd_checksum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Write zstd frames as cellvault did before they carried a content checksum."""
    params = zstandard.ZstdCompressionParameters
    real = params.from_level

    def from_level(level: int, **kwargs: object) -> zstandard.ZstdCompressionParameters:
        kwargs["write_checksum"] = False
        return real(level, **kwargs)

    monkeypatch.setattr(params, "from_level", from_level)


@pytest.mark.parametrize("checksum", [True, False], ids=["zstd-checksum", "older-archive"])
def test_flipped_byte_in_member_data_fails_verify_naming_archive_and_member(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch, checksum: bool
) -> None:
    if not checksum:
        without_zstd_checksum(monkeypatch)
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    assert ident is not None
    monkeypatch.undo()
    (data,) = archive_files(tmp_path / "backup")
    blob = (src / "db" / "blob.bin").read_bytes()
    flip_inside(data, blob[1_000_000:1_000_064])  # incompressible: stored verbatim by zstd
    # With a content checksum zstd itself refuses the damaged frame at its end,
    # which a verify reaches before it compares the digests with the manifest; an
    # older archive has only the digests.
    damage = "match checksum" if checksum else "data/crm/db/blob.bin"

    result = vault.verify()
    assert not result.ok
    (res,) = result.results
    assert not res.ok
    assert ident in (res.error or "")
    assert damage in (res.error or "")
    if not checksum:
        assert "sidecar" in (res.error or "")

    before = snapshot(src)
    restored = vault.restore(ident)
    assert not restored.ok
    # A restore checks each member's digest as it goes: it stops at the member.
    assert "data/crm/db/blob.bin" in (restored.cells[0].error or "")
    assert ident in (restored.cells[0].error or "")
    assert snapshot(src) == before
    assert not [p for p in src.parent.iterdir() if p.name.startswith(".cellvault-restore")]

    restored = vault.restore(ident, into=tmp_path / "out")
    assert not restored.ok
    assert not (tmp_path / "out" / "crm" / "crm").exists()


def test_flipped_byte_in_gzip_archive_fails_verify(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src], codec="gzip", level=0)
    ident = vault.backup().cells[0].archive
    (data,) = archive_files(tmp_path / "backup")
    blob = (src / "db" / "blob.bin").read_bytes()
    flip_inside(data, blob[1_000_000:1_000_064])
    result = vault.verify()
    assert not result.ok
    assert ident in (result.results[0].error or "")
    before = snapshot(src)
    restored = vault.restore(ident)
    assert not restored.ok
    assert ident in (restored.cells[0].error or "")
    assert snapshot(src) == before


def test_truncated_archive_fails_verify_clearly(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    (data,) = archive_files(tmp_path / "backup")
    raw = data.read_bytes()
    data.write_bytes(raw[: len(raw) // 2])
    result = vault.verify()
    assert not result.ok
    error = result.results[0].error or ""
    assert ident in error
    assert "truncated" in error
    before = snapshot(src)
    restored = vault.restore(ident)
    assert not restored.ok
    assert "truncated" in (restored.cells[0].error or "")
    assert snapshot(src) == before


@pytest.mark.parametrize("cut", [0, 10, 100, 1000, -100, -10, -1])
def test_archives_cut_anywhere_fail_verify(tmp_path: Path, src: Path, cut: int) -> None:
    (src / "db" / "blob.bin").unlink()  # small archive: cut near the start and the end
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    (data,) = archive_files(tmp_path / "backup")
    raw = data.read_bytes()
    data.write_bytes(raw[:cut])
    result = vault.verify()
    assert not result.ok
    assert ident in (result.results[0].error or "")


def test_sidecar_with_wrong_sha256_fails_verify_and_restore(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    side_path = tmp_path / "backup" / "crm" / f"{ident}.json"
    side = json.loads(side_path.read_text())
    side["sha256"] = hashlib.sha256(b"something else").hexdigest()
    side_path.write_text(json.dumps(side))
    result = vault.verify()
    assert not result.ok
    error = result.results[0].error or ""
    assert ident in error
    assert "does not match the sidecar" in error
    before = snapshot(src)
    restored = vault.restore(ident)
    assert not restored.ok
    assert "does not match the sidecar" in (restored.cells[0].error or "")
    assert snapshot(src) == before


def test_sidecar_with_wrong_size_fails_verify(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    side_path = tmp_path / "backup" / "crm" / f"{ident}.json"
    side = json.loads(side_path.read_text())
    side["size"] += 1
    side_path.write_text(json.dumps(side))
    result = vault.verify()
    assert not result.ok
    assert "does not match the sidecar" in (result.results[0].error or "")


def test_data_missing_behind_a_sidecar(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    (tmp_path / "backup" / "crm" / f"{ident}.tar.zst").unlink()
    result = vault.verify()
    assert not result.ok
    assert "data is missing" in (result.results[0].error or "")
    before = snapshot(src)
    assert not vault.restore(ident).ok
    assert snapshot(src) == before


def test_manifest_copy_that_differs_from_the_archive_is_refused(tmp_path: Path, src: Path) -> None:
    import zstandard

    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    copy = tmp_path / "backup" / "crm" / f"{ident}.manifest.json.zst"
    manifest = Manifest.from_json(
        zstandard.ZstdDecompressor().stream_reader(copy.read_bytes()).read()
    )
    del manifest.entries["data/crm/db/empty-dir"]
    copy.write_bytes(zstandard.ZstdCompressor().compress(manifest.to_json()))
    before = snapshot(src)
    # The sidecar records the copy's sha256 (issue 19), so the replaced copy is
    # refused while the restore is planned, before anything is staged; an older
    # sidecar without it meets the staging check ("manifest.json differs ...").
    with pytest.raises(ArchiveCorrupt, match="manifest copy does not match the sha256"):
        vault.restore(ident)
    assert snapshot(src) == before


def test_verify_archive_and_staged_tree_directly(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    target = vault.targets[0]
    (sidecar,) = target.archives("crm")
    with target.open_archive(sidecar) as raw:
        meta, manifest, members = verify_archive(raw, sidecar, target.name)
    assert meta.id == sidecar.id
    assert members == len(manifest) == 9
    staging = tmp_path / "staging"
    tree = StagedTree(staging=staging, manifest=target.manifest(sidecar), archive=str(sidecar.id))
    tree.prepare()
    assert tree.holders() == {str(sidecar.id)}
    with target.open_archive(sidecar) as raw:
        tree.take(ArchiveStream(raw, sidecar, target.name))
    tree.finish()
    assert tree.files == 4
    assert snapshot(staging / "crm") == snapshot(src)


# -- bounded memory, crashes -----------------------------------------------------------------


def run_python(code: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    # This checkout's cellvault, not whichever one is installed.
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
        "CELLVAULT_LOAD_PLUGINS": "",
    }
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_memory_stays_bounded_for_a_large_file(tmp_path: Path) -> None:
    # Measured in a fresh process so that earlier tests do not count. Its peak RSS is read
    # from VmHWM: ru_maxrss would not do, as Linux carries the parent's peak (pytest's,
    # whatever earlier tests made it) across fork and exec into the child's ru_maxrss.
    code = f"""
        import json, os, resource
        from pathlib import Path
        from cellvault import Cell, Config, Vault

        def peak_kb():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        src = Path({str(tmp_path / "crm")!r})
        src.mkdir()
        with open(src / "disk.img", "wb") as f:
            f.truncate(300 << 20)          # 300 MB, sparse
            f.seek(150 << 20)
            f.write(os.urandom(1 << 20))   # and some data that does not compress
        before = peak_kb()
        vault = Vault(Config(backup_dir={str(tmp_path / "backup")!r}, cells=[Cell("crm", [src])]),
                      load_entry_points=False)
        report = vault.backup()
        after = peak_kb()
        print(json.dumps({{"ok": report.ok, "before_kb": before, "after_kb": after,
                           "bytes": report.cells[0].bytes_read}}))
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["ok"]
    assert out["bytes"] == 300 << 20
    growth_mb = (out["after_kb"] - out["before_kb"]) / 1024
    assert out["after_kb"] / 1024 < 200, out
    assert growth_mb < 150, out


KILL_CHILD = """
    import errno, os, shutil, sys, time
    from pathlib import Path
    import cellvault.pack, cellvault.readahead, cellvault.targets.local
    from cellvault import Cell, Config, Vault

    mode, src, backup = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if mode == "pack":
        # Slow the pack down so that the parent sees the spool's .partial file.
        real_read = cellvault.readahead.FileSource.read
        def slow_read(self, n=-1):
            time.sleep(0.02)
            return real_read(self, n)
        cellvault.readahead.FileSource.read = slow_read
    else:
        # Force the copy path of LocalTarget.put_file and hang in the middle of it.
        real_link = os.link
        def no_link(a, b, *args, **kwargs):
            if str(a).endswith(".tar.zst"):
                raise OSError(errno.EXDEV, "cross-device link")
            return real_link(a, b, *args, **kwargs)
        cellvault.targets.local.os.link = no_link
        def hanging_copy(fsrc, fdst, length=0):
            fdst.write(fsrc.read(4096))
            fdst.flush()
            time.sleep(120)
        cellvault.targets.local.shutil.copyfileobj = hanging_copy
    vault = Vault(Config(backup_dir=backup, cells=[Cell("crm", [src])]), load_entry_points=False)
    vault.backup()
    print("finished")
"""


def make_large_cell(root: Path) -> Path:
    root.mkdir()
    rnd = random.Random(3)
    with open(root / "big.img", "wb") as f:
        f.truncate(256 << 20)
        for block in range(0, 256, 16):  # incompressible islands in a sparse file
            f.seek(block << 20)
            f.write(rnd.randbytes(1 << 20))
    (root / "small.txt").write_text("small\n")
    return root


def kill_when(
    proc: subprocess.Popen[bytes], found: Callable[[], Path | None], timeout: float = 30
) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hit = found()
        if hit is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return hit
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the backup ended before it could be killed: {out!r} {err!r}")
        time.sleep(0.002)
    proc.kill()
    proc.wait(10)
    pytest.fail("the backup never reached the point where it is killed")


@pytest.mark.parametrize("where", ["pack", "upload"])
def test_backup_killed_mid_write_commits_nothing_and_next_run_cleans_up(
    tmp_path: Path, where: str
) -> None:
    src = make_large_cell(tmp_path / "crm")
    backup = tmp_path / "backup"
    spool = backup / ".cellvault" / "spool"
    cell_dir = backup / "crm"
    # This checkout's cellvault, not whichever one is installed.
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
        "CELLVAULT_LOAD_PLUGINS": "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILL_CHILD), where, str(src), str(backup)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )

    def partial() -> Path | None:
        hits = (
            [p for p in spool.glob("*/*.partial") if p.stat().st_size > 0] if spool.exists() else []
        )
        return hits[0] if hits else None

    def tmp_in_target() -> Path | None:
        hits = list(cell_dir.glob(".*.tmp")) if cell_dir.exists() else []
        return hits[0] if hits and hits[0].stat().st_size > 0 else None

    try:
        debris = kill_when(proc, partial if where == "pack" else tmp_in_target)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert debris.exists()

    # Nothing was committed.
    vault = make_vault(backup, [src])
    assert vault.list() == []
    # Killed while packing, the target holds nothing of the cell; killed while
    # uploading, only the upload's temporary file, which the next run clears.
    left = sorted(p.name for p in cell_dir.iterdir()) if cell_dir.exists() else []
    assert left == ([] if where == "pack" else [debris.name])
    old_runs = {p.name for p in spool.iterdir()}
    assert old_runs

    # The next run succeeds and leaves no debris behind.
    report = vault.backup()
    assert report.ok, report.cells[0].error
    ident = report.cells[0].archive
    assert [a.id for a in vault.list()] == [ident]
    assert sorted(p.name for p in cell_dir.iterdir()) == [
        f"{ident}.json",
        f"{ident}.manifest.json.zst",
        f"{ident}.tar.zst",
    ]
    assert not list(backup.rglob("*.partial"))
    assert not list(backup.rglob("*.tmp"))
    assert not spool.exists() or not list(spool.iterdir())
    assert vault.verify().ok


def test_stale_spool_runs_are_removed_but_live_ones_kept(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    dead = spool / "aaaaaaaaaaaa"
    dead.mkdir(parents=True)
    (dead / "cell_crm_20250101_020000.tar.zst.partial").write_bytes(b"x")
    live = spool / "bbbbbbbbbbbb"
    live.mkdir()
    (live / "cell_crm_20250101_020001.tar.zst.partial").write_bytes(b"y")
    # Another process holds the live run's folder, as a running backup does.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(live)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
            "fcntl.flock(fd, fcntl.LOCK_SH)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        removed = clear_stale_spool(spool)
        assert removed == [dead]
        assert not dead.exists()
        assert live.exists()
    finally:
        holder.kill()
        holder.wait()
    assert clear_stale_spool(spool) == [live]
    assert clear_stale_spool(tmp_path / "absent") == []


def test_concurrent_runs_in_one_process_keep_their_spool(tmp_path: Path) -> None:
    # Many cells packed in parallel share a run folder; none removes another's.
    paths = {}
    for i in range(6):
        (tmp_path / f"c{i}").mkdir()
        (tmp_path / f"c{i}" / "f").write_bytes(os.urandom(200_000))
        paths[f"c{i}"] = [tmp_path / f"c{i}"]
    vault = make_vault(tmp_path / "backup", paths, jobs=3)
    report = vault.backup()
    assert report.ok, [c.error for c in report.cells]
    spool = tmp_path / "backup" / ".cellvault" / "spool"
    assert not spool.exists() or not list(spool.iterdir())
    # A folder this process holds is never judged stale.
    assert clear_stale_spool(spool) == []


def test_debris_in_the_target_is_not_listed_and_is_cleared(tmp_path: Path, src: Path) -> None:
    clock = TickingClock()
    vault = make_vault(tmp_path / "backup", [src], clock=clock)
    assert vault.backup().ok
    folder = tmp_path / "backup" / "crm"
    # An interrupted run: data without a sidecar, temporary files.
    (folder / "cell_crm_20200101_000000.tar.zst").write_bytes(b"half")
    (folder / ".cell_crm_20200101_000000.tar.zst.1234abcd.tmp").write_bytes(b"half")
    (folder / "cell_crm_20200101_000000.manifest.json.zst").write_bytes(b"half")
    (folder / "notes.txt").write_text("an operator's file")
    assert len(vault.list()) == 1
    assert vault.verify().ok
    assert vault.backup().ok
    names = sorted(p.name for p in folder.iterdir())
    assert "notes.txt" in names
    assert not [n for n in names if "20200101" in n]
    assert len(vault.list()) == 2


def test_a_dangling_link_in_the_target_does_not_hide_archives(tmp_path: Path, src: Path) -> None:
    vault = make_vault(tmp_path / "backup", [src])
    ident = vault.backup().cells[0].archive
    (tmp_path / "backup" / "crm" / "junk").symlink_to("nowhere")
    assert [a.id for a in vault.list()] == [ident]
    assert vault.verify().ok
    names = {e.name for e in vault.targets[0].list("crm")}
    assert f"{ident}.json" in names


def test_a_failed_pack_leaves_nothing_in_the_spool(
    tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object) -> None:
        raise OSError("the disk went away")

    monkeypatch.setattr(Packer, "_add_symlink", boom)  # fails after data was written
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert not report.ok
    assert report.cells[0].stage == "pack"
    assert "the disk went away" in (report.cells[0].error or "")
    spool = tmp_path / "backup" / ".cellvault" / "spool"
    assert not spool.exists() or not list(spool.rglob("*"))
    assert vault.list() == []


PACKED = ArchiveId("crm", dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC))


def _pack(tmp_path: Path, src: Path) -> PackResult:
    """A full backup of the one-root cell crm at *src*, as archive PACKED, in tmp_path's spool."""
    from cellvault.cell import Cell

    return Packer(
        cell=Cell("crm", [src]),
        ident=PACKED,
        codec=get_codec("zstd"),
        spool=tmp_path / "spool" / "run",
        host="test",
        version="0",
    ).pack()


def test_pack_result_counts_the_manifest_it_wrote_without_holding_it(tmp_path: Path) -> None:

    src = tmp_path / "crm"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / "sub" / f"f{i}").write_bytes(b"x" * i)
    (src / "link").symlink_to("sub/f1")
    ident = PACKED
    result = _pack(tmp_path, src)
    # data/crm, sub, five files, the link: counted as written.
    assert result.entries == 8
    assert result.holders == {str(ident)}
    # The manifest itself is parsed from the copy in the spool, when asked for.
    manifest = result.manifest
    assert len(manifest) == 8
    assert manifest.holders() == {str(ident)}
    entry = manifest.get("data/crm/sub/f3")
    assert entry is not None
    assert entry.sha256 == hashlib.sha256(b"xxx").hexdigest()
    (data,) = [result.data_path]
    members = {info.name: body for info, body in read_members(data)}
    assert Manifest.from_json(members["manifest.json"] or b"").entries == manifest.entries


def test_the_manifest_of_stored_files_is_the_text_of_their_entries(tmp_path: Path) -> None:
    # The packer writes a stored file's entry as text, not through Entry.to_json:
    # the same bytes, odd names, extended attributes and fractional times too.

    src = tmp_path / "crm"
    src.mkdir()
    names = ["plain", 'quo"te\\', "tab\tnew\nline", "é数", "x" * 150, "bad\udcff"]
    for i, name in enumerate(names):
        path = src / name
        path.write_bytes(b"y" * i * 100)
        os.utime(path, ns=(0, 1_700_000_000_123_456_789 + i))
    big = src / "big"
    big.write_bytes(random.Random(3).randbytes(readahead.READ_WHOLE + 1))
    try:
        os.setxattr(src / "plain", "user.note", b"\x00\xffhi")
        os.setxattr(big, "user.note", b"big")
    except OSError:
        pass  # a file system without user attributes: the rest is still compared
    ident = PACKED
    result = _pack(tmp_path, src)
    members = {info.name: body for info, body in read_members(result.data_path)}
    text = members["manifest.json"] or b""
    manifest = Manifest.from_json(text)
    assert manifest.to_json() == text
    assert result.files_stored == len(names) + 1
    stored = [e for e in manifest.entries.values() if e.type == "file"]
    assert len(stored) == len(names) + 1 and all(e.archive == str(ident) for e in stored)
