"""The skip policy: every skip goes through one helper, and under CI=true nothing skips.

``tests.system_tools.unavailable`` skips on a laptop and fails under
``CI=true``; ``tests/skip_policy.py`` fails a CI session that skipped
anything anyway. These tests run pytest itself on small test files to show
both, and read the suite's sources for skips that bypass the helper.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system_tools import import_module, needs_root, unavailable

REPO = Path(__file__).resolve().parents[1]
PYTEST = (sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-p", "no:cacheprovider")

SKIPPING = """
import pytest

pytest.importorskip("cellvault_no_such_module")
"""
SKIPPING_TESTS = """
import pytest


@pytest.mark.skipif(True, reason="a marker that bypasses the helper")
def test_marked():
    raise AssertionError("never runs")


def test_passes():
    assert 1 + 1 == 2
"""


def _pytest(folder: Path, *, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [*PYTEST, "-q", "--rootdir", str(folder), "-c", os.devnull, str(folder)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_ci_session_that_skipped_anything_fails_naming_what(tmp_path: Path) -> None:
    (tmp_path / "test_module_skip.py").write_text(SKIPPING)
    (tmp_path / "test_marker_skip.py").write_text(SKIPPING_TESTS)
    laptop = _pytest(tmp_path, ci=False)
    assert laptop.returncode == 0, laptop.stdout
    assert "1 passed, 2 skipped" in laptop.stdout
    ci = _pytest(tmp_path, ci=True)
    assert ci.returncode == 1, ci.stdout
    assert "1 passed, 2 skipped" in ci.stdout
    assert "ERROR: CI=true and 2 tests were skipped: " in ci.stdout
    assert "test_marker_skip.py::test_marked" in ci.stdout
    assert "test_module_skip.py" in ci.stdout


def test_a_ci_session_that_skipped_nothing_passes(tmp_path: Path) -> None:
    (tmp_path / "test_fine.py").write_text("def test_fine():\n    assert True\n")
    ci = _pytest(tmp_path, ci=True)
    assert ci.returncode == 0, ci.stdout
    assert "ERROR" not in ci.stdout


def test_the_helpers_skip_on_a_laptop_and_fail_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no such thing"):
        unavailable("no such thing")
    with pytest.raises(pytest.skip.Exception, match=r"pip install \.no-such-extra"):
        import_module("cellvault_no_such_module", ".no-such-extra")
    assert import_module("json", "-").dumps([1]) == "[1]"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"no such thing \(CI=true: "):
        unavailable("no such thing")
    with pytest.raises(pytest.fail.Exception, match="cellvault_no_such_module"):
        import_module("cellvault_no_such_module", ".no-such-extra")


def test_root_only_tests_run_as_root_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    if os.geteuid() == 0:
        assert needs_root("do anything") is None
    else:
        with pytest.raises(pytest.fail.Exception, match="only root can do anything"):
            needs_root("do anything")


#: Ways to skip that do not go through tests.system_tools.unavailable.
BYPASS = re.compile(
    r"pytest\.skip\(|\.importorskip\(|mark\.skip(if)?\b|pytest\.xfail\(|mark\.xfail"
)


def test_every_skip_of_the_suite_goes_through_the_helper() -> None:
    sources = [*sorted((REPO / "tests").rglob("*.py")), REPO / "src" / "cellvault" / "testing.py"]
    sources += sorted((REPO / "examples").rglob("test_*.py"))
    allowed = {REPO / "tests" / "system_tools.py", Path(__file__).resolve()}
    found = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in sources
        if path not in allowed
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if BYPASS.search(line)
    ]
    assert found == []
