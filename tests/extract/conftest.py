"""Fixtures of the extraction tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cellvault.extract import inflate, stage
from tests.helpers import children


@pytest.fixture(params=["here", "writer"])
def who_writes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Who creates the small files of a staging tree: this process, or the forked writer.

    The writer (:class:`~cellvault.extract.writer.FileWriter`) is used by an
    archive of :data:`~cellvault.extract.stage.WRITER_MIN_FILES` files or
    more; here, by every archive.
    """
    if request.param == "writer":
        monkeypatch.setattr(stage, "WRITER_MIN_FILES", 0)
    return str(request.param)


@pytest.fixture(params=["noted", "read through"])
def others_noted(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How a staging tree's end finds the folders, links and nodes it makes.

    From the paths its preparation noted, or (past
    :data:`~cellvault.extract.stage.OTHERS_KEPT` of them) by reading the
    manifest through; here, also for the few of a test.
    """
    if request.param == "read through":
        monkeypatch.setattr(stage, "OTHERS_KEPT", 0)
    return str(request.param)


@pytest.fixture(params=["thread", "child"])
def who_decompresses(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Who decompresses an archive: a thread of this process, or a forked child.

    The child (:class:`~cellvault.extract.inflate.Inflate`) takes archives
    of :data:`~cellvault.extract.inflate.INFLATE_MIN` stored bytes or more;
    here, every archive.
    """
    if request.param == "child":
        in_a_child(monkeypatch)
    return str(request.param)


def in_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every archive decompressed by a forked child, however large this process has grown.

    (A long test run grows past :data:`~cellvault.forking.FORK_MAX_RSS`,
    above which the child is not forked.)
    """
    monkeypatch.setattr(inflate, "INFLATE_MIN", 0)
    monkeypatch.setattr(inflate, "FORK_MAX_RSS", 1 << 62)


@pytest.fixture
def forked_children() -> Callable[[], list[int]]:
    """What gives the children forked since the test began and not yet waited for.

    Others may be there before it: the servers a test session started.
    """
    before = children()
    return lambda: sorted(children() - before)
