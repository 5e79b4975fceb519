"""The packer's walk: string paths, exclusions compiled once, unchanged entries kept."""

from __future__ import annotations

import os
import random
from pathlib import Path, PurePosixPath

import attrs
import pytest

from cellvault import Cell, Manifest
from cellvault.cell import excluder as _excluder
from cellvault.cell import is_excluded

from .archive_helpers import archive_files, make_vault, read_members

PATTERNS = [
    "*.tmp",
    "cache",
    "cache/",
    "logs/*.gz",
    "/logs/*.gz",
    "a/b/c",
    "[ab]?",
    "*",
    "**/x",
    "é*",
    "",
    "/",
    "sub/",
    "d*/e*/f*",
    "[!a]*.log",
]


def random_rel(rnd: random.Random) -> str:
    parts = rnd.choices(
        ["logs", "cache", "a", "b", "c", "x.tmp", "y.gz", "é1", "ab", "sub", "d1", "e2", "f3"],
        k=rnd.randrange(1, 5),
    )
    return "/".join(parts)


@pytest.mark.parametrize("patterns", [[p] for p in PATTERNS] + [PATTERNS, PATTERNS[:5]])
def test_compiled_exclusions_agree_with_is_excluded(patterns: list[str]) -> None:
    cell = Cell("crm", ["/srv/crm"], exclude=tuple(patterns))
    excludes = _excluder(cell)
    assert excludes is not None
    rnd = random.Random(len(patterns))
    for _ in range(500):
        rel = random_rel(rnd)
        path = PurePosixPath(rel)
        assert excludes(rel, path.name) == is_excluded(path, cell.exclude), (rel, patterns)


def test_a_cell_with_its_own_exclusion_rules_is_asked(tmp_path: Path) -> None:
    @attrs.frozen
    class Picky(Cell):
        def excludes(self, relpath: PurePosixPath) -> bool:
            return relpath.name.startswith("skip")

    cell = Picky("crm", [str(tmp_path)])  # no patterns: its rules still apply
    excludes = _excluder(cell)
    assert excludes is not None
    assert excludes("a/skip-me", "skip-me")
    assert not excludes("a/keep", "keep")
    assert _excluder(Cell("crm", [str(tmp_path)])) is None


def test_excluded_paths_are_not_walked(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    (src / "logs").mkdir(parents=True)
    (src / "logs" / "old.gz").write_text("old")
    (src / "logs" / "now.log").write_text("now")
    (src / "cache" / "deep").mkdir(parents=True)
    (src / "cache" / "deep" / "x").write_text("x")
    (src / "keep.tmp.txt").write_text("kept")
    (src / "drop.tmp").write_text("dropped")
    vault = make_vault(tmp_path / "backup", [src], exclude=["logs/*.gz", "cache", "*.tmp"])
    assert vault.backup().ok
    (data,) = archive_files(tmp_path / "backup")
    names = [info.name for info, _ in read_members(data)]
    assert names == [
        "meta.json",
        "data/crm",
        "data/crm/keep.tmp.txt",
        "data/crm/logs",
        "data/crm/logs/now.log",
        "manifest.json",
    ]


def test_unchanged_files_keep_the_parents_entries(tmp_path: Path) -> None:
    src = tmp_path / "crm"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_text(str(i))
    old = 1_600_000_000 * 10**9  # long before the parent's scan: not racy
    for path in src.iterdir():
        os.utime(path, ns=(old, old))
    vault = make_vault(tmp_path / "backup", [src])
    full = vault.backup()
    assert full.ok
    (src / "f2").write_text("changed")
    inc = vault.backup(kind="incremental")
    assert inc.ok
    assert inc.cells[0].files == 1
    manifests = []
    for data in archive_files(tmp_path / "backup"):
        members = dict((info.name, body) for info, body in read_members(data))
        manifests.append(Manifest.from_json(members["manifest.json"] or b""))
    first, second = manifests
    for i in (0, 1, 3, 4):
        name = f"data/crm/f{i}"
        entry = second.get(name)
        assert entry is not None
        assert entry == first.get(name)
        assert entry.archive == first.archive
    changed = second.get("data/crm/f2")
    assert changed is not None
    assert changed.archive == second.archive
