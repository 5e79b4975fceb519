"""ls, find and diff against known histories: the chain walks of the incremental tests.

Every point's expected tree is the snapshot the incremental tests take of the
live tree when they back it up; ls, find and diff must agree with those
snapshots, and must read no archive data.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.stateful import invariant

from cellvault import ArchiveNotFound, ConfigError
from cellvault.targets.base import Target
from tests.ops.test_incremental import ChainMachine


def expected_tree(snap: dict[str, tuple]) -> dict[str, tuple]:
    """What ls must show for a snapshot: cell paths under the root ``crm``."""
    out: dict[str, tuple] = {}
    for rel, value in snap.items():
        kind = value[0]
        if kind == "file":
            out[f"crm/{rel}"] = ("file", value[1], len(value[2]), value[3])
        elif kind == "dir":
            out[f"crm/{rel}"] = ("dir", value[1], value[2])
        else:
            out[f"crm/{rel}"] = ("symlink", value[1], value[2])
    return out


def listed(machine: ChainMachine, archive: str) -> dict[str, tuple]:
    point, entries = machine.vault.ls("crm", select=archive)
    assert point.archive == archive
    out: dict[str, tuple] = {}
    for e in entries:
        if e.path == "crm":
            continue
        if e.type == "file":
            out[e.path] = ("file", e.mode, e.size, e.mtime_ns)
        elif e.type == "dir":
            out[e.path] = ("dir", e.mode, e.mtime_ns)
        else:
            out[e.path] = ("symlink", e.target, e.mtime_ns)
    return out


def expected_diff(a: dict[str, tuple], b: dict[str, tuple]) -> dict[str, str]:
    """Path -> added / removed / modified, from two snapshots (a directory's mtime aside)."""
    out: dict[str, str] = {}
    for rel in a.keys() - b.keys():
        out[f"crm/{rel}"] = "removed"
    for rel in b.keys() - a.keys():
        out[f"crm/{rel}"] = "added"
    for rel in a.keys() & b.keys():
        before, after = a[rel], b[rel]
        differs = before[1] != after[1] if before[0] == after[0] == "dir" else before != after
        if differs:
            out[f"crm/{rel}"] = "modified"
    return out


def check_points(machine: ChainMachine) -> None:
    """ls of every point, diff of every consecutive pair, find across the history."""
    for archive, snap in machine.points:
        assert listed(machine, archive) == expected_tree(snap)
    for (a, sa), (b, sb) in zip(machine.points, machine.points[1:], strict=False):
        report = machine.vault.diff("crm", a, b)
        assert {e.path: e.status for e in report.entries} == expected_diff(sa, sb)
        totals = report.totals()
        assert totals["added"] + totals["removed"] + totals["modified"] == len(report.entries)
        assert totals["added_bytes"] == sum(
            len(sb[p[4:]][2])
            for p, s in expected_diff(sa, sb).items()
            if s == "added" and sb[p[4:]][0] == "file"
        )
    if not machine.points:
        return
    for pattern in ("*", "b.bin", "crm/dir/*", "n*"):
        found = [(f.archive, f.path) for f in machine.vault.find("crm", pattern)]
        want = []
        for archive, snap in reversed(machine.points):
            for path in sorted({"crm", *expected_tree(snap)}):
                name = path.rpartition("/")[2]
                hit = fnmatch.fnmatchcase(path if "/" in pattern else name, pattern)
                if hit:
                    want.append((archive, path))
        assert sorted(found) == sorted(want)
        # Newest point first.
        archives = [a for a, _ in found]
        assert archives == sorted(archives, reverse=True)


class BrowseMachine(ChainMachine):
    """The incremental test's chain walk, with ls, find and diff checked at every step."""

    @invariant()
    def browsing_agrees_with_the_snapshots(self) -> None:
        if len(self.points) >= 1:
            archive, snap = self.points[-1]
            assert listed(self, archive) == expected_tree(snap)
        if len(self.points) >= 2:
            (a, sa), (b, sb) = self.points[-2:]
            report = self.vault.diff("crm", a, b)
            assert {e.path: e.status for e in report.entries} == expected_diff(sa, sb)

    def check_all(self) -> None:
        super().check_all()
        check_points(self)


class TestBrowse(BrowseMachine.TestCase):  # type: ignore[name-defined]
    settings = settings(max_examples=8, stateful_step_count=15, deadline=None)


@pytest.fixture
def walked(monkeypatch: pytest.MonkeyPatch):
    """A fixed walk through every kind of change, four points; archive data unreadable.

    Target.open_archive is made to fail: browsing must never read archive data.
    """
    machine = ChainMachine()
    machine.check_unchanged = False  # four points, one per backup
    machine.seed()
    machine.backup("full")
    machine.create(b"new file")
    machine.backup("incremental")
    (machine.live / "dir" / "b.bin").rename(machine.live / "moved.bin")
    (machine.live / "moved.bin").chmod(0o600)
    (machine.live / "ln").symlink_to("moved.bin")
    machine._past(machine.live / "ln")
    machine.backup("incremental")
    (machine.live / "a.txt").unlink()
    (machine.live / "ln").unlink()
    (machine.live / "ln").symlink_to("dir")
    machine.backup("incremental")

    def no_data(self: Target, sidecar: object) -> None:
        raise AssertionError("browsing read archive data")

    monkeypatch.setattr(Target, "open_archive", no_data)
    yield machine
    shutil.rmtree(machine.tmp, ignore_errors=True)


def test_ls_find_diff_of_a_fixed_walk(walked: ChainMachine) -> None:
    check_points(walked)
    points = [a for a, _ in walked.points]
    # "a.txt was deleted at the last point": find says where it last was.
    found = list(walked.vault.find("crm", "a.txt"))
    assert [f.archive for f in found] == points[-2::-1]
    assert all(f.size == 5 for f in found)
    report = walked.vault.diff("crm", points[-2], points[-1])
    changes = {e.path: (e.status, e.changes) for e in report.entries}
    assert changes["crm/a.txt"] == ("removed", ())
    assert changes["crm/ln"][0] == "modified" and "target" in changes["crm/ln"][1]
    assert report.totals()["removed_bytes"] == 5


def test_ls_of_a_path_and_of_a_path_it_does_not_hold(walked: ChainMachine) -> None:
    first = walked.points[0][0]
    _, entries = walked.vault.ls("crm", select=first, path="crm/dir")
    assert [e.path for e in entries] == ["crm/dir", "crm/dir/b.bin"]
    # A live absolute path under the cell's root means the same.
    _, entries = walked.vault.ls("crm", select=first, path=str(walked.live / "dir"))
    assert [e.path for e in entries] == ["crm/dir", "crm/dir/b.bin"]
    with pytest.raises(ArchiveNotFound, match="holds no path crm/nothing"):
        walked.vault.ls("crm", select=first, path="crm/nothing")
    with pytest.raises(ConfigError, match="under none of the cell's roots"):
        walked.vault.ls("crm", path="/elsewhere/x")


def test_find_bounds_and_bad_input(walked: ChainMachine) -> None:
    points = [a for a, _ in walked.points]
    sidecar = walked.vault.target("local").archives("crm")
    second = sidecar[1].id.when
    found = {f.archive for f in walked.vault.find("crm", "*", since=second, until=second)}
    assert found == {points[1]}
    with pytest.raises(ConfigError, match="empty"):
        list(walked.vault.find("crm", ""))
    with pytest.raises(ArchiveNotFound):
        list(walked.vault.find("nocell", "*"))


def test_command_line_json_lines(walked: ChainMachine, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "BACKUP_DIR": str(walked.tmp / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELL_CRM_PATHS": str(walked.live),
    }
    points = [a for a, _ in walked.points]

    def run(*args: str) -> list[dict]:
        done = subprocess.run(
            [sys.executable, "-m", "cellvault", *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]

    lines = run("ls", "crm", "--date", points[0], "--json")
    assert lines[-1]["ok"] is True and lines[-1]["point"]["archive"] == points[0]
    assert {x["path"] for x in lines[:-1]} == {"crm", *expected_tree(walked.points[0][1])}
    lines = run("find", "crm", "a.txt", "--json")
    assert [x["archive"] for x in lines[:-1]] == points[-2::-1]
    assert lines[-1] == {"ok": True, "matches": 3}
    lines = run("diff", "crm", points[-2], points[-1], "--json")
    assert {x["path"]: x["status"] for x in lines[:-1]} == expected_diff(
        walked.points[-2][1], walked.points[-1][1]
    )
    assert lines[-1]["totals"]["removed"] >= 1
    text = subprocess.run(
        [sys.executable, "-m", "cellvault", "diff", "crm", points[-2]],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "- crm/a.txt" in text and "1 removed (5 B)" in text
    bad = subprocess.run(
        [sys.executable, "-m", "cellvault", "find", "crm", "x", "--since", "yesterday"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "not a date or time" in bad.stderr
    assert "Traceback" not in bad.stderr
