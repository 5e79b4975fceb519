"""What the bare packer and the bare restore share (``pack_floor.py``, ``restore_floor.py``).

Their children, forked as cellvault forks its own; their commands timed in
alternating rounds (each round runs every command once, in the opposite
order from the round before, so that neither side always runs on a cache or
a machine warmed by the other), and the medians against a stock tool's.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable

from cellvault.forking import fork


def children(
    count: int, work: Callable[[int, int, int], None], *keep: int
) -> list[tuple[int, int, int]]:
    """*count* children forked by :func:`cellvault.forking.fork`, each running *work(feed, out, parent)*.

    Each is killed with this process and keeps only its two pipes and *keep*;
    returns each one's process id, the write end of its feed and the read end
    of what it sends back.
    """
    started = []
    for _ in range(count):
        got = fork(work, *keep)
        if got is None:
            raise SystemExit("this process cannot fork")
        started.append(got)
    return started


def alternate(
    runs: dict[str, Callable[[], float]],
    rounds: int,
    before: Callable[[], None] | None = None,
) -> dict[str, list[float]]:
    """The wall seconds each of *runs* returned, round by round (*before* runs before each)."""
    walls: dict[str, list[float]] = {label: [] for label in runs}
    for i in range(rounds):
        for label in list(runs)[:: 1 if i % 2 else -1]:
            if before is not None:
                before()
            walls[label].append(runs[label]())
        print(", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items()), file=sys.stderr)
    return walls


def against(walls: dict[str, list[float]], stock: str, names: dict[str, str]) -> float:
    """Print each labelled median and its ratio to *stock*'s (the median of the rounds' ratios).

    *names* maps the labels to print to their text; returns *stock*'s median.
    """
    tar = statistics.median(walls[stock])
    print(f"{names[stock]}: {tar:.2f} s wall")
    for label, text in names.items():
        if label == stock or label not in walls:
            continue
        ratio = statistics.median(a / t for a, t in zip(walls[label], walls[stock], strict=True))
        print(f"{text}: {statistics.median(walls[label]):.2f} s wall, {ratio:.2f}x {names[stock]}")
    return tar
