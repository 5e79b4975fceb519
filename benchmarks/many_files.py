"""Many small files: cellvault side by side with ``tar | zstd`` on one generated tree.

A tree of ``--files`` small files (200 to 2,000 bytes, 100 per directory,
deterministic) is backed up, backed up again with nothing changed and with
1% of the files changed, restored (the chain) into an empty directory and
verified at each level by cellvault's command line; the same tree goes
through ``tar -c | zstd -T0`` and ``zstd -d | tar -x`` (the full backup's
archive), and through restic when it is installed. Each
command is timed (wall) and its peak resident set taken from ``os.wait4``
(for a pipeline, the sum of its processes' peaks). Warm cache: nothing is
dropped between steps. Prints a Markdown table for docs/performance.md.

    python benchmarks/many_files.py --files 200000 --work /scratch/cv-many

With ``--backup-pairs N``, only full backups, each into a fresh backup folder
and each followed at once by ``tar -c | zstd -T0`` of the same tree: N pairs
with the default check after the backup and N with ``BACKUP_VERIFY=0``,
alternating; prints every pair's ratio and the medians (a shared machine's
load moves both of a pair alike, not two runs minutes apart). With
``--restore-pairs N``, one full backup, then N pairs of ``zstd -dc archive |
tar -x`` and ``cellvault restore --into`` of that one archive, each into an
empty folder, the order flipped every pair; each output folder is removed and
the removal written back (``sync``) outside the timed window.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from installed import compile_cellvault


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


def touch(root: Path, files: int, every: int = 100) -> int:
    """Rewrite one file in *every* (same size, new content and mtime); return how many."""
    count = 0
    for i in range(0, files, every):
        path = root / f"d{i // 10000:03d}" / f"e{i // 100 % 100:02d}" / f"f{i:07d}.txt"
        data = path.read_bytes()
        path.write_bytes(data[::-1])
        count += 1
    return count


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
    parser.add_argument(
        "--cells", type=Path, help="reuse the cells folder of a run made with --keep"
    )
    parser.add_argument(
        "--backup-pairs", type=int, default=0, help="only full backups side by side with tar"
    )
    parser.add_argument(
        "--restore-pairs", type=int, default=0, help="only restores side by side with tar -x"
    )
    parser.add_argument(
        "--restore-to",
        type=Path,
        help="restore into a folder here (for example /dev/shm, to leave the disk out)",
    )
    args = parser.parse_args(argv)
    compile_cellvault()
    work: Path = args.work
    shutil.rmtree(work, ignore_errors=True)
    cells = work / "cells"
    if args.cells is not None:
        # A tree generated before (by this script, kept): its crm folder, as it is.
        cells = args.cells
        size = 0
        work.mkdir(parents=True)
    else:
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

    if args.backup_pairs or args.restore_pairs:
        if args.backup_pairs:
            backup_pairs(args.backup_pairs, env, cv, cells, work)
        if args.restore_pairs:
            restore_pairs(args.restore_pairs, env, cv, work, args.restore_to or work)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    step("cellvault full backup", [*cv, "backup"])
    step("cellvault incremental, no change", [*cv, "backup", "--type", "incremental"])
    changed = touch(cells / "crm", args.files)
    step(
        f"cellvault incremental, {changed:,} files changed",
        [*cv, "backup", "--type", "incremental"],
    )
    step("cellvault restore --into (chain)", [*cv, "restore", "--into", str(work / "cv-out")])
    shutil.rmtree(work / "cv-out")
    for level in ("quick", "read", "full", "drill"):
        step(f"cellvault verify --level {level}", [*cv, "verify", "--level", level])
    step("tar -c \\| zstd -T0", ["tar", "-C", str(cells), "-cf", "-", "crm"], ["zstd", "-T0", "-q"])
    # The full backup's archive (the oldest): the same bytes tar reads back.
    archive = sorted((work / "backup" / "crm").glob("*.tar.zst"))[0]
    (work / "tar-out").mkdir()
    step(
        "zstd -d < archive \\| tar -x",
        ["zstd", "-dc", str(archive)],
        ["tar", "-C", str(work / "tar-out"), "-xf", "-"],
    )
    shutil.rmtree(work / "tar-out")
    if shutil.which("restic"):
        env["RESTIC_REPOSITORY"] = str(work / "restic")
        env["RESTIC_PASSWORD"] = "bench"  # noqa: S105 - a scratch repository
        restic = ["restic", "-q"]
        measure([[*restic, "init"]], env, work)
        step("restic backup", [*restic, "backup", str(cells / "crm")])
        step("restic backup, no change", [*restic, "backup", str(cells / "crm")])
        step("restic restore", [*restic, "restore", "latest", "--target", str(work / "restic-out")])
        shutil.rmtree(work / "restic-out")
    print(f"\n{args.files:,} files, {size / 1e6:.0f} MB\n")
    print("| operation | wall | peak RSS |")
    print("| --- | ---: | ---: |")
    for label, wall, peak in rows:
        print(f"| {label} | {wall:.1f} s | {peak / 1024:.0f} MiB |")
    walls = {label: wall for label, wall, _ in rows}
    tar_c = walls["tar -c \\| zstd -T0"]
    tar_x = walls["zstd -d < archive \\| tar -x"]
    print(f"\nfull backup / tar -c: {walls['cellvault full backup'] / tar_c:.2f}x; ", end="")
    print(f"restore / tar -x: {walls['cellvault restore --into (chain)'] / tar_x:.2f}x")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def backup_pairs(pairs: int, env: dict[str, str], cv: list[str], cells: Path, work: Path) -> None:
    """Full backups and ``tar -c | zstd -T0`` side by side; print the ratios."""
    tar = (["tar", "-C", str(cells), "-cf", "-", "crm"], ["zstd", "-T0", "-q"])
    found: dict[str, list[tuple[float, float, int, int]]] = {"default": [], "BACKUP_VERIFY=0": []}
    for _ in range(pairs):
        for label, runs in found.items():
            shutil.rmtree(work / "backup", ignore_errors=True)
            run_env = {**env, "BACKUP_VERIFY": "0"} if label != "default" else env
            wall, peak = measure([[*cv, "backup"]], run_env, work)
            tar_wall, tar_peak = measure(tar, env, work)
            runs.append((wall, tar_wall, peak, tar_peak))
            load = os.getloadavg()[0]
            print(
                f"{label}: cellvault {wall:.1f} s, tar | zstd {tar_wall:.1f} s, "
                f"{wall / tar_wall:.2f}x (load {load:.1f})",
                file=sys.stderr,
                flush=True,
            )
    print("\n| full backup | cellvault | tar -c \\| zstd -T0 | ratio | peak RSS |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for label, runs in found.items():
        cv_med = statistics.median(r[0] for r in runs)
        tar_med = statistics.median(r[1] for r in runs)
        ratio = statistics.median(r[0] / r[1] for r in runs)
        peak = max(r[2] for r in runs)
        print(
            f"| {label} | {cv_med:.1f} s | {tar_med:.1f} s | {ratio:.2f}x | {peak / 1024:.0f} MiB |"
        )
    print(f"\nmedians of {pairs} pairs each; ratio: the median of the pairs' ratios")


def restore_pairs(pairs: int, env: dict[str, str], cv: list[str], work: Path, where: Path) -> None:
    """One full backup; ``cellvault restore --into`` and ``zstd -dc | tar -x`` of it, side by side."""
    shutil.rmtree(work / "backup", ignore_errors=True)
    measure([[*cv, "backup"]], {**env, "BACKUP_VERIFY": "0"}, work)
    archive = sorted((work / "backup" / "crm").glob("*.tar.zst"))[0]
    out = where / "cv-restored"

    def cellvault() -> float:
        return measure([[*cv, "restore", "--into", str(out)]], env, work)[0]

    def tar() -> float:
        out.mkdir()
        return measure(
            [["zstd", "-dc", str(archive)], ["tar", "-C", str(out), "-xf", "-"]], env, work
        )[0]

    ratios: list[float] = []
    walls: dict[str, list[float]] = {"cellvault": [], "tar": []}
    for i in range(pairs):
        order = [("cellvault", cellvault), ("tar", tar)]
        found: dict[str, float] = {}
        for label, run in order if i % 2 else order[::-1]:
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(["sync"], check=True)
            found[label] = run()
        shutil.rmtree(out, ignore_errors=True)
        for label, wall in found.items():
            walls[label].append(wall)
        ratios.append(found["cellvault"] / found["tar"])
        load = os.getloadavg()[0]
        print(
            f"restore: cellvault {found['cellvault']:.1f} s, zstd -dc | tar -x "
            f"{found['tar']:.1f} s, {ratios[-1]:.2f}x (load {load:.1f})",
            file=sys.stderr,
            flush=True,
        )
    print("\n| restore of one full archive | cellvault | zstd -dc \\| tar -x | ratio |")
    print("| --- | ---: | ---: | ---: |")
    print(
        f"| restore --into | {statistics.median(walls['cellvault']):.1f} s | "
        f"{statistics.median(walls['tar']):.1f} s | {statistics.median(ratios):.2f}x |"
    )
    print(f"\nmedians of {pairs} pairs; ratio: the median of the pairs' ratios")


if __name__ == "__main__":
    raise SystemExit(main())
