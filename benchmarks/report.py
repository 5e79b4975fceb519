"""Render a results file of ``benchmarks/run.py`` as Markdown tables (for docs/performance.md).

    python benchmarks/report.py benchmarks/results/20250101T020000Z.json [more.json ...]

With several files (runs at different corpus sizes), a memory table compares
the peak RSS of each tool and operation across the sizes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OPS = {
    "full": "full backup",
    "incr_nochange": "incremental, no change",
    "incr_change": "incremental, 1% changed",
    "restore": "restore (latest)",
    "verify": "verify (all data)",
}


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def times_table(doc: dict[str, Any]) -> str:
    tools = list(doc["medians"])
    lines = [
        "| operation | " + " | ".join(tools) + " | cellvault / restic | cellvault / tar |",
        "| --- | " + " | ".join("---:" for _ in tools) + " | ---: | ---: |",
    ]
    for op, label in OPS.items():
        cells = []
        for tool in tools:
            m = doc["medians"][tool][op]
            cells.append("-" if m["wall"] is None else f"{m['wall']:.2f} s")
        ratios = doc["ratios"].get("cellvault", {}).get(op, {})
        lines.append(
            f"| {label} | "
            + " | ".join(cells)
            + f" | {_ratio(ratios.get('vs_restic'))} | {_ratio(ratios.get('vs_tar'))} |"
        )
    return "\n".join(lines)


def memory_table(doc: dict[str, Any]) -> str:
    tools = list(doc["medians"])
    lines = [
        "| operation (peak RSS, MiB) | " + " | ".join(tools) + " |",
        "| --- | " + " | ".join("---:" for _ in tools) + " |",
    ]
    for op, label in OPS.items():
        lines.append(
            f"| {label} | "
            + " | ".join(_mib(doc["medians"][t][op]["peak_kib"]) for t in tools)
            + " |"
        )
    return "\n".join(lines)


def sizes_table(docs: list[dict[str, Any]], tool: str) -> str:
    docs = sorted(docs, key=lambda d: d["size"])
    head = " | ".join(f"{d['size'] / 2**20:.0f} MiB ({d['corpus']['files']} files)" for d in docs)
    lines = [
        f"| {tool}: peak RSS, MiB | {head} |",
        "| --- | " + " | ".join("---:" for _ in docs) + " |",
    ]
    for op, label in OPS.items():
        row = []
        for d in docs:
            m = d["medians"].get(tool, {}).get(op)
            row.append(_mib(m["peak_kib"]) if m else "-")
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def header(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (
        f"{doc['size'] / 2**20:.0f} MiB corpus ({doc['corpus']['files']} files), "
        f"{doc['repeat']} repetitions, medians, {doc['cache']} cache; "
        f"{m['nproc']} CPUs ({m['cpu']}), {m['memory']}; load {doc['load']['start'].split('load average: ')[-1]} "
        f"at start, {doc['load']['end'].split('load average: ')[-1]} at end; results file "
        f"`{doc.get('_file', '?')}`"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path)
    args = parser.parse_args(argv)
    docs = []
    for path in args.results:
        doc = json.loads(path.read_text())
        doc["_file"] = path.name
        docs.append(doc)
    for doc in docs:
        print(header(doc))
        print()
        print(times_table(doc))
        print()
        print(memory_table(doc))
        print()
    if len(docs) > 1:
        tools = sorted({t for d in docs for t in d["medians"]})
        for tool in tools:
            print(sizes_table(docs, tool))
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
