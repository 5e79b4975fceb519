"""A directory of the staging tree swapped for a link while a restore writes: nothing escapes.

Extraction opens every directory from the staging root down with
``O_NOFOLLOW | O_DIRECTORY`` and creates every path relative to those
descriptors, so a directory replaced by a symbolic link (by another process,
between two files) makes the restore fail with a clear error; nothing is
written through the link, and an in-place restore leaves the live data as it
was.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cellvault import UnsafeArchive
from cellvault.events import Event
from cellvault.extract import ArchiveStream, StagedTree, dirfds, stage

from ..archive_helpers import make_vault, snapshot


def _cell(root: Path) -> Path:
    src = root / "cells" / "crm"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    (src / "a" / "1.bin").write_bytes(os.urandom(64 << 10))
    (src / "b" / "2.txt").write_bytes(b"second directory\n")
    return src


def _swap_for_link(directory: Path, outside: Path) -> None:
    directory.rename(directory.with_name(directory.name + ".moved"))
    directory.symlink_to(outside)


def test_a_directory_swapped_for_a_link_mid_extraction_is_refused(tmp_path: Path) -> None:
    src = _cell(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    target = vault.targets[0]
    (sidecar,) = target.archives("crm")
    ident = sidecar.id
    staging = tmp_path / "staging"
    swapped: list[bool] = []

    def race(_n: int) -> None:
        # After the first bytes of a/1.bin: b/ exists already (made by prepare).
        if not swapped:
            swapped.append(True)
            _swap_for_link(staging / "crm" / "b", outside)

    tree = StagedTree(
        staging=staging, manifest=target.manifest(sidecar), archive=str(ident), on_bytes=race
    )
    tree.prepare()
    with pytest.raises(UnsafeArchive) as info, target.open_archive(sidecar) as raw:
        tree.take(ArchiveStream(raw, sidecar, target.name))
    assert swapped
    assert "crm/b is no longer a directory of the staging tree" in info.value.message
    assert list(outside.iterdir()) == []


def test_in_place_restore_with_a_directory_swapped_for_a_link_leaves_everything(
    tmp_path: Path,
) -> None:
    src = _cell(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("do not touch\n")
    events: list[Event] = []

    def race(event: Event) -> None:
        events.append(event)
        if (
            event.name != "restore.fetched"
            or len([e for e in events if e.name == "restore.fetched"]) != 1
        ):
            return
        # The full archive is staged; the incremental (which holds b/2.txt) is next.
        # The staging directory (its owner file, .owner.json, lies beside it).
        (staging,) = [p for p in src.parent.glob(".cellvault-restore-*") if p.is_dir()]
        _swap_for_link(staging / "crm" / "b", outside)

    vault = make_vault(tmp_path / "backup", [src])
    assert vault.backup().ok
    (src / "b" / "2.txt").write_bytes(b"changed after the full backup\n")
    incremental = vault.backup(kind="incremental")
    assert incremental.ok
    assert incremental.cells[0].kind == "incremental"
    (src / "a" / "1.bin").write_bytes(b"live data changed since\n")
    live = snapshot(src)
    before = snapshot(outside)

    restorer = make_vault(tmp_path / "backup", [src])
    restorer.on_event = race
    report = restorer.restore(incremental.cells[0].archive, skip_prebackup=True)

    assert not report.ok
    assert "no longer a directory of the staging tree" in (report.cells[0].error or "")
    assert snapshot(src) == live
    assert snapshot(outside) == before
    assert not list(src.parent.glob(".cellvault-restore-*"))


@pytest.mark.parametrize("with_openat2", [True, False], ids=["openat2", "fallback"])
def test_dir_fds_never_open_through_a_link(
    tmp_path: Path, with_openat2: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not with_openat2:
        monkeypatch.setattr(dirfds.openat2, "works", False)
    (tmp_path / "tree" / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside" / "b").mkdir(parents=True)
    (tmp_path / "tree" / "l").symlink_to(tmp_path / "outside")
    dirs = stage.DirFds(str(tmp_path / "tree"), "cell_crm_20250101_020000")
    try:
        fd = dirs.open("a/b")
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "tree" / "a" / "b"))
        os.close(fd)
        for through in ("l/b", "l"):
            with pytest.raises(UnsafeArchive, match="no longer a directory of the staging tree"):
                dirs.open(through)
            with pytest.raises(UnsafeArchive):
                dirs.fd(through)
    finally:
        dirs.close()
    assert list((tmp_path / "outside").iterdir()) == [tmp_path / "outside" / "b"]
