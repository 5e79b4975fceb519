"""What encryption at rest costs a full backup: cellvault with and without age, side by side.

The benchmark corpus (``benchmarks/corpus.py``) is backed up in full by
cellvault's command line, alternately without encryption and with
``BACKUP_ENCRYPT_RECIPIENTS`` set (an age X25519 key made for the run), each
into an empty backup directory, ``--repeat`` times each; the order flips every
repetition so that neither mode always runs on a warmer machine. Three
settings, each a pair:

* ``noverify``: ``BACKUP_VERIFY=0``, the pack and the store alone;
* ``read``: the default check after the backup (``BACKUP_VERIFY_LEVEL=read``),
  with the identity given, so the encrypted archive is decrypted and
  decompressed to its end as the plain one is decompressed;
* ``read-keyless``: the same, without the identity (a backup host holding only
  the public key): the check of the encrypted archive is its size and sha256.

Wall time, CPU time (user + system, from ``getrusage`` of the children) and
peak RSS (``os.wait4``, through ``run.run_steps``) per run; medians and the
encrypted/plain ratios per setting. CPU time moves far less than wall time
on a machine other jobs share. Warm page cache (the
corpus is read once first). Prints a Markdown table for docs/performance.md
and writes the JSON beside it.

    python benchmarks/encryption.py --size 500M --repeat 3 --work /scratch/cv-enc
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import corpus
import run as harness

SETTINGS: dict[str, dict[str, str]] = {
    "noverify": {"BACKUP_VERIFY": "0"},
    "read": {"BACKUP_VERIFY_LEVEL": "read"},
    "read-keyless": {"BACKUP_VERIFY_LEVEL": "read"},
}


def _key(work: Path) -> tuple[str, Path]:
    """An age key pair for the run: the recipient, and the identity file."""
    import pyrage

    identity = pyrage.x25519.Identity.generate()
    path = work / "age.key"
    path.write_text(f"{identity}\n")
    path.chmod(0o600)
    return str(identity.to_public()), path


def _env(base: dict[str, str], setting: str, sealed: bool, key: tuple[str, Path]) -> dict[str, str]:
    env = dict(base, **SETTINGS[setting])
    if sealed:
        env["BACKUP_ENCRYPT_RECIPIENTS"] = key[0]
        if setting != "read-keyless":
            env["BACKUP_AGE_IDENTITY"] = str(key[1])
    return env


def one(env: dict[str, str], repo: Path) -> dict[str, float]:
    """One full backup into the empty *repo*: wall and CPU seconds, peak RSS, archive size."""
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(env, BACKUP_DIR=str(repo))
    step = harness.Step([[sys.executable, "-m", "cellvault", "backup", "--type", "full"]])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        m = harness.run_steps([step], env)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        stored = sum(p.stat().st_size for p in (repo / "bench").glob("cell_*.tar.*"))
    finally:
        shutil.rmtree(repo, ignore_errors=True)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": m.wall, "cpu": cpu, "peak_mib": m.peak_kib / 1024, "stored_mib": stored / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="500M")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--work", type=Path, default=Path(tempfile.gettempdir()) / "cv-bench-encryption"
    )
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--corpus", type=Path, help="reuse this corpus instead of generating one")
    parser.add_argument(
        "--src", type=Path, help="measure the cellvault in this copy of src/ (git archive REV src)"
    )
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    tree = args.corpus or args.work / "corpus"
    if args.corpus is None and not (tree.exists() and any(tree.iterdir())):
        corpus.generate(tree, args.size)
    key = _key(args.work)
    drop = ("BACKUP_", "RESTORE_", "CELLVAULT_")  # the caller's own configuration
    base = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    base.update(BACKUP_CELLS="bench", BACKUP_CELL_BENCH_PATHS=str(tree), BACKUP_ALERT_LOG="off")
    src = args.src or Path(__file__).resolve().parent.parent / "src"
    base["PYTHONPATH"] = str(src)
    one(_env(base, "noverify", False, key), args.work / "repo")  # warm the page cache
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    for setting in args.settings.split(","):
        runs[setting] = {"plain": [], "age": []}
        for rep in range(args.repeat):
            order = (False, True) if rep % 2 == 0 else (True, False)
            for sealed in order:
                runs[setting]["age" if sealed else "plain"].append(
                    one(_env(base, setting, sealed, key), args.work / "repo")
                )
                time.sleep(1.1)  # archive ids have whole seconds
    rows = []
    for setting, pair in runs.items():
        plain = statistics.median(r["wall"] for r in pair["plain"])
        sealed = statistics.median(r["wall"] for r in pair["age"])
        plain_cpu = statistics.median(r["cpu"] for r in pair["plain"])
        sealed_cpu = statistics.median(r["cpu"] for r in pair["age"])
        rows.append(
            {
                "setting": setting,
                "plain": plain,
                "age": sealed,
                "ratio": sealed / plain,
                "plain_cpu": plain_cpu,
                "age_cpu": sealed_cpu,
                "cpu_ratio": sealed_cpu / plain_cpu,
                "stored_mib": statistics.median(r["stored_mib"] for r in pair["age"]),
                "plain_peak_mib": statistics.median(r["peak_mib"] for r in pair["plain"]),
                "age_peak_mib": statistics.median(r["peak_mib"] for r in pair["age"]),
                "plain_runs": [round(r["wall"], 2) for r in pair["plain"]],
                "age_runs": [round(r["wall"], 2) for r in pair["age"]],
            }
        )
    result: dict[str, Any] = {
        "size": args.size,
        "repeat": args.repeat,
        "revision": harness.git_revision(),
        "src": str(src),
        "machine": harness.machine_info(args.work),
        "rows": rows,
    }
    out = args.work / "encryption.json"
    out.write_text(json.dumps(result, indent=2))
    print(
        "| setting | wall plain | wall age | age / plain | CPU plain | CPU age | age / plain "
        "| peak RSS plain / age |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(
            f"| {r['setting']} | {r['plain']:.2f} s | {r['age']:.2f} s | {r['ratio']:.2f}x "
            f"| {r['plain_cpu']:.2f} s | {r['age_cpu']:.2f} s | {r['cpu_ratio']:.2f}x "
            f"| {r['plain_peak_mib']:.0f} / {r['age_peak_mib']:.0f} MiB |"
        )
    print(f"\nencrypted archive: {rows[0]['stored_mib']:.0f} MiB")
    print(
        f"\nruns (s): {json.dumps({r['setting']: [r['plain_runs'], r['age_runs']] for r in rows})}"
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
