"""A platform restore through the fleet with one and with two pool workers, side by side.

    python benchmarks/fleet_restore.py [--cells 12] [--size-mib 16] [--files 0]
        [--repeat 3] [--broker redis://127.0.0.1:6379/8] [--standby-in DIR]

Backs up *cells* cells of *size-mib* MiB each (one incompressible file, plus
*files* small text files of 1 to 8 KiB in nested folders, as a service's
configuration, templates and uploads) to a shared folder, then restores all of them through ``cellvault fleet restore`` onto
an empty standby, first with one pool worker, then with two (each worker
one task at a time), alternating, *repeat* times (the order flips every
repetition, so a drift of the machine lands on both counts). Before each
timed restore the previous standby is removed, the page cache's dirty
pages are written back (``sync``, then a bounded wait until the kernel's
``Dirty`` and ``Writeback`` are small) and the caches are dropped (as root),
so no run pays for the one before and every run reads the archives cold.
Prints the median wall time (the platform RTO) of each, their ratio, the
ratio of each pair and the load average at the start and the end. Results
go in docs/performance.md; nothing here is a test.

The standby's cell folders are made in the benchmark's temporary folder
(on the disk that holds the archives) unless ``--standby-in DIR`` names
another place, such as a tmpfs (``/dev/shm``): then the workers write into
memory and share no disk, as the restore pool's nodes share none, and the
restores are bound by the CPU alone; the archives are still read from the
disk, cold.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cellvault import Vault
from cellvault.config import load_env
from cellvault.fleet import Fleet

SRC = Path(__file__).resolve().parents[1] / "src"


def _env(base: Path, cells: list[str], root: Path, broker: str, host: str) -> Path:
    path = base / f"{host}.env"
    path.write_text(
        "\n".join(
            [
                f"BACKUP_DIR={base / host / 'backup'}",
                f"BACKUP_CELLS={' '.join(cells)}",
                f"BACKUP_CELLS_ROOT={root}",
                "BACKUP_TARGETS=local,nas",
                f"BACKUP_NAS_PATH={base / 'nas'}",
                "BACKUP_ALERT_LOG=off",
                f"CELLVAULT_BROKER_URL={broker}",
                f"CELLVAULT_FLEET_HOST={host}",
                "",
            ]
        )
    )
    return path


def _start(env_file: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "cellvault", "--env-file", str(env_file), "fleet", "worker",
         "--pool", "--concurrency", "1"],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(SRC)},
        start_new_session=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _dirty_kib() -> int:
    """The page cache's dirty and under-writeback memory, in KiB (0 where unknown)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return 0
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return sum(int(fields.get(k, "0 kB").split()[0]) for k in ("Dirty", "Writeback"))


def settle(limit_kib: int = 16 << 10, wait: float = 60.0) -> None:
    """Write back what earlier runs left dirty and drop the caches, so each timed run starts even.

    Without the drop, a run that follows the creation and removal of tens of
    thousands of files took up to six times as long as the first (kernel time
    growing run after run); with it, every run starts cold, as after a
    disaster. Where dropping is not allowed, the runs are warm and may drift.
    """
    os.sync()
    deadline = time.monotonic() + wait
    while _dirty_kib() > limit_kib and time.monotonic() < deadline:
        time.sleep(0.2)
        os.sync()
    with contextlib.suppress(OSError):  # not root, or not allowed here: warm runs
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def one_run(
    base: Path, cells: list[str], broker: str, workers: int, tag: str, where: Path
) -> float:
    standby = where / f"standby-{tag}"
    shutil.rmtree(standby, ignore_errors=True)
    settle()
    hosts = [f"pool{n}-{tag}" for n in range(workers)]
    procs = [_start(_env(base, cells, standby, broker, h), base / f"{h}.log") for h in hosts]
    coordinator = Fleet(Vault(load_env({**_vars(base, cells, broker)}), load_entry_points=False))
    try:
        deadline = time.monotonic() + 60
        while set(hosts) - set(coordinator.hosts(timeout=1.0).live):
            if time.monotonic() > deadline:
                raise SystemExit(f"pool workers {hosts} did not start; see {base}/*.log")
        report = coordinator.restore("latest", cells=cells, skip_prebackup=True)
        if not report.ok:
            raise SystemExit(f"restore failed: {[r for r in report.results if not r.ok]}")
        return report.duration
    finally:
        for proc in procs:
            _stop(proc)
        for h in hosts:
            shutil.rmtree(base / h, ignore_errors=True)
        shutil.rmtree(standby, ignore_errors=True)
        settle()


def _vars(base: Path, cells: list[str], broker: str) -> dict[str, str]:
    return {
        "BACKUP_DIR": str(base / "coordinator"),
        "BACKUP_CELLS": " ".join(cells),
        "BACKUP_CELLS_ROOT": str(base / "cells"),
        "BACKUP_TARGETS": "local,nas",
        "BACKUP_NAS_PATH": str(base / "nas"),
        "BACKUP_ALERT_LOG": "off",
        "CELLVAULT_BROKER_URL": broker,
    }


def _small_files(root: Path, count: int) -> None:
    """*count* compressible text files of 1 to 8 KiB, 100 to a folder."""
    for n in range(count):
        folder = root / "app" / f"d{n // 100:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        line = f"{root.name} item {n} " + "lorem ipsum dolor sit amet " * 3 + "\n"
        (folder / f"f{n:06d}.txt").write_text(line * (1 + (n * 7919) % 8 * 1024 // len(line)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=12)
    parser.add_argument("--size-mib", type=int, default=16)
    parser.add_argument("--files", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/8")
    parser.add_argument(
        "--standby-in",
        type=Path,
        help="make the standby's cell folders here (default: beside the archives)",
    )
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="cellvault-fleet-bench-"))
    where = base if args.standby_in is None else Path(tempfile.mkdtemp(dir=args.standby_in))
    cells = [f"cell{i:03d}" for i in range(args.cells)]
    for cell in cells:
        (base / "cells" / cell).mkdir(parents=True)
        (base / "cells" / cell / "data.bin").write_bytes(os.urandom(args.size_mib << 20))
        _small_files(base / "cells" / cell, args.files)
    source = Vault(load_env(_vars(base, cells, args.broker)), load_entry_points=False)
    if not source.backup(kind="full").ok:
        raise SystemExit("the backup of the corpus failed")
    times: dict[int, list[float]] = {1: [], 2: []}
    load_start = os.getloadavg()
    for n in range(args.repeat):
        for workers in (1, 2) if n % 2 == 0 else (2, 1):
            seconds = one_run(base, cells, args.broker, workers, f"{workers}w{n}", where)
            times[workers].append(seconds)
            print(f"run {n + 1}: {workers} worker(s): {seconds:.2f} s", flush=True)
    load_end = os.getloadavg()
    one, two = statistics.median(times[1]), statistics.median(times[2])
    pairs = ", ".join(f"{b / a:.2f}" for a, b in zip(times[1], times[2], strict=True))
    print(
        f"{args.cells} cells x ({args.size_mib} MiB + {args.files} files): median RTO 1 worker {one:.2f} s, "
        f"2 workers {two:.2f} s, ratio {two / one:.2f}; pair ratios {pairs}; "
        f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end; "
        f"standby in {where}"
    )
    shutil.rmtree(base, ignore_errors=True)
    shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
