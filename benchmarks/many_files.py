"""Many small files: cellvault side by side with ``tar | zstd`` on one generated tree.

A tree of ``--files`` small files (200 to 2,000 bytes, 100 per directory,
deterministic) is backed up, backed up again with nothing changed, restored
into an empty directory and verified by cellvault's command line; the same
tree goes through ``tar -c | zstd -T0`` and ``zstd -d | tar -x``. Each
command is timed (wall) and its peak resident set taken from ``os.wait4``
(for a pipeline, the sum of its processes' peaks). Warm cache: nothing is
dropped between steps. Prints a Markdown table for docs/performance.md.

    python benchmarks/many_files.py --files 200000 --work /scratch/cv-many
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def generate(root: Path, files: int, seed: int = 8) -> int:
    """Write the tree; return its bytes."""
    rng = random.Random(seed)
    total = 0
    old = 1_600_000_000
    for i in range(files):
        folder = root / f"d{i // 10000:03d}" / f"e{i // 100 % 100:02d}"
        if i % 100 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        data = rng.randbytes(rng.randint(100, 1000)).hex().encode()
        path = folder / f"f{i:07d}.txt"
        path.write_bytes(data)
        os.utime(path, (old, old))
        total += len(data)
    return total


def measure(commands: Sequence[Sequence[str]], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Run *commands* as a pipeline; return wall seconds and the summed peak RSS (KiB)."""
    started = time.monotonic()
    procs: list[subprocess.Popen[bytes]] = []
    prev = None
    for i, argv in enumerate(commands):
        last = i == len(commands) - 1
        proc = subprocess.Popen(
            argv,
            stdin=prev,
            stdout=subprocess.DEVNULL if last else subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        if prev is not None:
            prev.close()
        prev = proc.stdout
        procs.append(proc)
    peak = 0
    for proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{commands} failed ({proc.returncode})")
        peak += usage.ru_maxrss
    return time.monotonic() - started, peak


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder (deleted)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    cells = work / "cells"
    size = generate(cells / "crm", args.files)
    env = {
        **os.environ,
        "BACKUP_DIR": str(work / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(cells),
        "BACKUP_TARGETS": "local",
    }
    cv = [sys.executable, "-m", "cellvault"]
    rows: list[tuple[str, float, int]] = []

    def step(label: str, *commands: Sequence[str]) -> None:
        wall, peak = measure(commands, env, work)
        rows.append((label, wall, peak))
        print(f"{label}: {wall:.1f} s, {peak / 1024:.0f} MiB", file=sys.stderr, flush=True)

    step("cellvault full backup", [*cv, "backup"])
    step("cellvault incremental, no change", [*cv, "backup", "--type", "incremental"])
    step("cellvault restore --into", [*cv, "restore", "--into", str(work / "cv-out")])
    step("cellvault verify (read)", [*cv, "verify"])
    step("cellvault verify --level drill", [*cv, "verify", "--level", "drill"])
    step("tar -c | zstd -T0", ["tar", "-C", str(cells), "-cf", "-", "crm"], ["zstd", "-T0", "-q"])
    # The full backup's archive (the oldest): the incremental holds no file.
    archive = sorted((work / "backup" / "crm").glob("*.tar.zst"))[0]
    (work / "tar-out").mkdir()
    step(
        "zstd -d < archive | tar -x",
        ["zstd", "-dc", str(archive)],
        ["tar", "-C", str(work / "tar-out"), "-xf", "-"],
    )
    print(f"\n{args.files:,} files, {size / 1e6:.0f} MB\n")
    print("| operation | wall | peak RSS |")
    print("| --- | ---: | ---: |")
    for label, wall, peak in rows:
        cell = label.replace("|", "\\|")  # a pipe inside a Markdown table cell
        print(f"| {cell} | {wall:.1f} s | {peak / 1024:.0f} MiB |")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
