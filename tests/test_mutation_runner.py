"""The mutation runner's bookkeeping (tests/mutation/run.py): scores and stale allow-list entries.

mutmut itself is not run here (``nox -s mutate`` does, by hand): these tests give
the runner the ``.meta`` files a run leaves and check what it makes of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.mutation import run

SPEC = {"modules": ["src/cellvault/swap.py"], "tests": []}
CONFIG = {"groups": {"swap": SPEC}}


def _ran(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, codes: dict[str, int | None]) -> None:
    monkeypatch.setattr(run, "BUILD", tmp_path)
    meta = tmp_path / "swap" / "mutants" / "src" / "cellvault" / "swap.py.meta"
    meta.parent.mkdir(parents=True)
    meta.write_text(json.dumps({"exit_code_by_key": codes}))


def test_the_score_counts_killed_timed_out_and_explained_of_those_run() -> None:
    codes = {"a": 1, "b": 3, "c": 36, "d": 0, "e": 0, "f": None, "g": 5, "h": 99, "i": -9}
    summary = run.summarise(codes, {"d": "why"})
    assert {k: summary.get(k, 0) for k in run.KINDS} == {
        "total": 9,
        "killed": 4,
        "allowed": 1,
        "survived": 1,
        "no tests": 1,
        "other": 1,
        "not run": 1,
    }
    assert summary["score"] == 5 / 8
    assert summary["unexplained"] == ["e", "g", "h"]


def test_the_report_names_the_allow_list_entries_that_explain_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    killed, kept, gone = (f"cellvault.swap.x_create__mutmut_{n}" for n in (1, 2, 3))
    elsewhere = "cellvault.lock.x_acquire__mutmut_1"  # a module this report does not cover
    _ran(tmp_path, monkeypatch, {killed: 1, kept: 0})
    allowed = {killed: "why", kept: "why", gone: "why", elsewhere: "why"}
    assert run.stale_entries(["swap"], CONFIG, allowed) == [
        (killed, "killed"),
        (gone, "no such mutant"),
    ]
    assert run.report(["swap"], CONFIG, allowed) is True  # 1 killed, 1 explained: 100%
    removals = [x for x in capsys.readouterr().out.splitlines() if x.startswith("allow-list")]
    assert removals == [
        f"allow-list entry to remove: {killed} (killed)",
        f"allow-list entry to remove: {gone} (no such mutant)",
    ]


def test_a_group_with_mutants_not_run_does_not_meet_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _ran(
        tmp_path,
        monkeypatch,
        {"cellvault.swap.x_a__mutmut_1": 1, "cellvault.swap.x_a__mutmut_2": None},
    )
    assert run.report(["swap"], CONFIG, {}) is False
    assert (
        "| src/cellvault/swap.py | 2 | 1 | 0 | 0 | 0 | 0 | 1 | 100.0% |" in capsys.readouterr().out
    )


def test_again_needs_one_group_named() -> None:
    with pytest.raises(SystemExit) as info:
        run.main(["--again", "cellvault.swap.x_a__mutmut_1"])
    assert info.value.code == 2


def test_a_group_sets_its_timeout_in_the_copy_and_the_rest_keep_mutmuts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tomllib

    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "pyproject.toml").write_text('[project]\nname = "x"\n')
    monkeypatch.setattr(run, "REPO", repo)
    monkeypatch.setattr(run, "BUILD", tmp_path / "build")
    monkeypatch.setattr(run, "COPIED", ("src",))
    spec = {**SPEC, "deselect": "not slow", "timeout_multiplier": 4, "timeout_constant": 2}
    work = run.prepare("swap", spec)
    settings = tomllib.loads((work / "pyproject.toml").read_text())["tool"]["mutmut"]
    assert settings["timeout_multiplier"] == 4.0
    assert settings["timeout_constant"] == 2.0
    assert settings["only_mutate"] == ["src/cellvault/swap.py"]
    assert settings["pytest_add_cli_args"][-2:] == ["-k", "not slow"]
    plain = tomllib.loads((run.prepare("swap", SPEC) / "pyproject.toml").read_text())
    assert "timeout_multiplier" not in plain["tool"]["mutmut"]
    assert "timeout_constant" not in plain["tool"]["mutmut"]
