"""Every archive restores with stock tools alone: ``zstd -d | tar x`` and ``tar xzf``.

In a disaster cellvault itself may be missing. These tests run the real tools
(argument lists, never a shell). Without them the tests are skipped, except on
CI (``CI=true``), where a missing tool is a failure.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.system_tools import require

from .archive_helpers import archive_files, make_vault, snapshot


def need(tool: str) -> str:
    """The path of *tool*; skipped with the install command when it is missing (failed on CI)."""
    require(tool)
    path = shutil.which(tool)
    assert path is not None
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "cells" / "crm"
    (root / "db" / "empty-dir").mkdir(parents=True)
    (root / "数据").mkdir()
    (root / "数据" / "表.csv").write_text("a,b\n1,2\n")
    (root / "db" / "blob.bin").write_bytes(random.Random(5).randbytes(300_000))
    (root / "db" / "zeros").write_bytes(bytes(1_000_000))
    (root / "db" / "empty").write_bytes(b"")
    (root / "secret").write_text("s")
    (root / "secret").chmod(0o600)
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "ro").write_text("read only")
    (root / "ro").chmod(0o444)
    (root / "link").symlink_to("数据/表.csv")
    (root / "dangling").symlink_to("not/here")
    long = root / ("d" * 60) / ("e" * 60) / ("f" * 60)
    long.mkdir(parents=True)
    (long / ("g" * 120)).write_text("long path")
    for i, path in enumerate(sorted(root.rglob("*"), key=lambda p: -len(p.parts))):
        os.utime(
            path,
            ns=(
                1_700_000_000_000_000_000 + i * 1_234_567,
                1_700_000_000_000_000_000 + i * 1_234_567,
            ),
            follow_symlinks=False,
        )
    return root


def same_tree(restored: Path, original: Path) -> None:
    """Same paths, types, bytes, modes and links; mtimes to the microsecond (tar's float)."""
    got, want = snapshot(restored), snapshot(original)
    assert set(got) == set(want)
    for rel, spec in want.items():
        have = got[rel]
        # (type, mode or link target, mtime_ns[, bytes])
        assert have[0] == spec[0], rel
        assert have[1] == spec[1], rel
        assert have[3:] == spec[3:], rel
        assert abs(have[2] - spec[2]) < 2_000, rel


def check_extracted(out: Path, src: Path, ident: str) -> None:
    meta = json.loads((out / "meta.json").read_text())
    assert meta["id"] == ident
    assert "backed_at" in meta
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["archive"] == ident
    assert sorted(p.name for p in out.iterdir()) == ["data", "manifest.json", "meta.json"]
    same_tree(out / "data" / "crm", src)


def test_zstd_d_piped_to_tar_x(tmp_path: Path, src: Path) -> None:
    zstd, tar = need("zstd"), need("tar")
    vault = make_vault(tmp_path / "backup", [src])
    report = vault.backup()
    assert report.ok
    (archive,) = archive_files(tmp_path / "backup")
    assert archive.name.endswith(".tar.zst")
    out = tmp_path / "out"
    out.mkdir()
    unzstd = subprocess.Popen([zstd, "-d", "-c", "-q", "--", str(archive)], stdout=subprocess.PIPE)
    assert unzstd.stdout is not None
    untar = subprocess.run(
        [tar, "-x", "-f", "-", "-C", str(out)],
        stdin=unzstd.stdout,
        capture_output=True,
        check=False,
    )
    unzstd.stdout.close()
    assert unzstd.wait(60) == 0
    assert untar.returncode == 0, untar.stderr
    assert untar.stderr == b""  # no warnings about unknown headers
    check_extracted(out, src, report.cells[0].archive or "")


def test_stock_tar_lists_meta_first_and_manifest_last(tmp_path: Path, src: Path) -> None:
    zstd, tar = need("zstd"), need("tar")
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    (archive,) = archive_files(tmp_path / "backup")
    raw = subprocess.run(
        [zstd, "-d", "-c", "-q", "--", str(archive)], capture_output=True, check=True
    )
    listing = subprocess.run(
        [tar, "-t", "-f", "-"], input=raw.stdout, capture_output=True, check=True
    )
    names = listing.stdout.decode().splitlines()
    assert names[0] == "meta.json"
    assert names[-1] == "manifest.json"
    assert "data/crm/数据/表.csv" in names


def test_tar_xzf_for_gzip_archives(tmp_path: Path, src: Path) -> None:
    tar = need("tar")
    need("gzip")
    vault = make_vault(tmp_path / "backup", [src], codec="gzip")
    report = vault.backup()
    assert report.ok
    (archive,) = archive_files(tmp_path / "backup")
    assert archive.name.endswith(".tar.gz")
    out = tmp_path / "out"
    out.mkdir()
    untar = subprocess.run(
        [tar, "-xzf", str(archive), "-C", str(out)], capture_output=True, check=False
    )
    assert untar.returncode == 0, untar.stderr
    assert untar.stderr == b""
    check_extracted(out, src, report.cells[0].archive or "")


def test_incremental_archive_holds_changed_files_for_stock_tools(tmp_path: Path, src: Path) -> None:
    zstd, tar = need("zstd"), need("tar")
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup(kind="full").ok
    (src / "secret").write_text("changed secret")
    report = vault.backup(kind="incremental")
    assert report.ok
    assert report.cells[0].kind == "incremental"
    archive = next(
        p for p in archive_files(tmp_path / "backup") if report.cells[0].archive in p.name
    )
    raw = subprocess.run(
        [zstd, "-d", "-c", "-q", "--", str(archive)], capture_output=True, check=True
    )
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run([tar, "-x", "-f", "-", "-C", str(out)], input=raw.stdout, check=True)
    # The changed file's bytes are in the incremental; the manifest says where the rest are.
    assert (out / "data" / "crm" / "secret").read_text() == "changed secret"
    manifest = json.loads((out / "manifest.json").read_text())
    holders = {e["path"]: e.get("archive") for e in manifest["entries"] if e["type"] == "file"}
    assert holders["data/crm/secret"] == report.cells[0].archive
    assert holders["data/crm/run.sh"] == report.cells[0].parent
