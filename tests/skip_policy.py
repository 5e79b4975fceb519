"""The skip policy's last line of defence: under ``CI=true`` a run that skipped anything fails.

Every skip of the suite goes through :func:`tests.system_tools.unavailable`,
which fails the test under ``CI=true`` instead of skipping it. A skip that
does not (a ``skipif`` marker, an ``importorskip``, a third-party plugin's
skip) is counted here, and at the end of the session a CI run that skipped
even one test, or one module, fails, naming them. Loaded by
``tests/conftest.py`` (``pytest_plugins``).
"""

from __future__ import annotations

import pytest

from tests.system_tools import in_ci


class SkipCounter:
    """The tests and modules a session skipped (an expected failure, xfail, is no skip)."""

    def __init__(self) -> None:
        self.skipped: list[str] = []

    def _count(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.append(report.nodeid or str(report.fspath))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._count(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._count(report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not in_ci() or not self.skipped:
            return
        shown = ", ".join(self.skipped[:20]) + (" ..." if len(self.skipped) > 20 else "")
        session.config.get_terminal_writer().line(
            f"ERROR: CI=true and {len(self.skipped)} tests were skipped: {shown}; "
            "a CI run skips nothing (see docs/testing.md, the skip policy)",
            red=True,
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(SkipCounter(), "cellvault-skip-counter")
