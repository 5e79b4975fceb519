"""Time ``ls``, ``find`` and ``diff`` (manifests only) on a cell of many files.

Builds a cell of ``--files`` small files (default 200,000) in 1,000 folders,
takes a full backup, changes 1% of the files and takes an incremental, then
times each browsing call through the library (the command line adds its
start-up and printing). Prints one JSON object; docs/performance.md has the
figures. ``python benchmarks/browse.py --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

from cellvault import Cell, Config, Vault


def build(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"d{i % 1000:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i:06d}.txt").write_bytes(b"x" * (i % 200))
    past = time.time() - 3600
    for path in root.rglob("*"):
        os.utime(path, (past, past))


def timed(fn):  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument(
        "--dir", type=Path, default=None, help="scratch folder (default: a temp one)"
    )
    args = parser.parse_args()
    scratch = args.dir or Path(tempfile.mkdtemp(prefix="cv-browse-"))
    live = scratch / "crm"
    build(live, args.files)
    vault = Vault(
        Config(backup_dir=scratch / "backup", cells=[Cell("crm", [live])]), load_entry_points=False
    )
    backup_s, full = timed(lambda: vault.backup(kind="full"))
    for i in range(0, args.files, 100):
        (live / f"d{i % 1000:03d}" / f"f{i:06d}.txt").write_bytes(b"changed")
    time.sleep(1.1)
    vault.backup(kind="incremental")
    a = full.cells[0].archive
    out = {"files": args.files, "full_backup_s": round(backup_s, 2)}
    out["ls_s"], n = timed(lambda: sum(1 for _ in vault.ls("crm")[1]))
    out["ls_paths"] = n
    out["find_s"], hits = timed(lambda: sum(1 for _ in vault.find("crm", "f00012*.txt")))
    out["find_matches"] = hits
    out["diff_s"], report = timed(lambda: vault.diff("crm", a, "latest"))
    out["diff_changed"] = len(report.entries)
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
