"""Commands timed in alternating rounds, and their medians against a stock tool's.

Used by ``pack_floor.py`` and ``restore_floor.py``: each round runs every
command once, in the opposite order from the round before, so that neither
side always runs on a cache or a machine warmed by the other.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable


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
