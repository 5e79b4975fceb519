"""What signed sidecars cost: a listing, a quick verify and a backup, signed and unsigned.

One cell backed up ``--archives`` times (1 full, then incrementals of one
changed file) into two local targets, one with a signing key and checked
against it, one without; then, ``--repeat`` times each, side by side:

* ``list``: ``Target.archives`` (every sidecar read, parsed and, signed, checked);
* ``verify quick``: ``Vault.verify(level="quick", all_archives=True)``;
* ``backup``: one incremental of one changed file (signing is one Ed25519
  signature per target).

Prints a Markdown table of medians and the signed/unsigned ratio.
``python benchmarks/signing.py --help``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellvault import Cell, Config, Vault
from cellvault.signing import generate_keypair


class _Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        self.now += dt.timedelta(seconds=1)
        return self.now


def _vault(root: Path, backup: Path, clock: _Clock, **config: Any) -> Vault:
    return Vault(
        Config(backup_dir=backup, cells=[Cell("crm", [root / "cell"])], **config),
        load_entry_points=False,
        clock=clock,
    )


def _median(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archives", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cv-bench-sign-") as tmp:
        root = Path(tmp)
        (root / "cell").mkdir()
        (root / "cell" / "data.bin").write_bytes(bytes(range(256)) * 4096)
        pair = generate_keypair(root / "site.key")
        clocks = {"unsigned": _Clock(), "signed": _Clock()}
        vaults = {
            "unsigned": _vault(root, root / "plain", clocks["unsigned"]),
            "signed": _vault(
                root,
                root / "signed",
                clocks["signed"],
                signing_key=pair.private,
                require_signed=True,
            ),
        }
        for name, vault in vaults.items():
            assert vault.backup(kind="full").ok
            for n in range(args.archives - 1):
                (root / "cell" / "changed.txt").write_text(f"{name} {n}\n")
                assert vault.backup(kind="incremental", reason="benchmark").ok
        rows = []
        for what, run in (
            ("list", lambda v: v.targets[0].archives("crm")),
            ("verify quick", lambda v: v.verify(level="quick", all_archives=True)),
            ("backup (incremental)", lambda v: v.backup(kind="incremental")),
        ):
            medians = {
                name: _median(lambda v=vault, r=run: r(v), args.repeat)
                for name, vault in vaults.items()
            }
            rows.append((what, medians["unsigned"], medians["signed"]))
        print(f"{args.archives} archives of one cell, medians of {args.repeat} runs\n")
        print("| operation | unsigned | signed | signed / unsigned |")
        print("| --- | --- | --- | --- |")
        for what, plain, signed in rows:
            print(
                f"| {what} | {plain * 1000:.1f} ms | {signed * 1000:.1f} ms | {signed / plain:.2f} |"
            )


if __name__ == "__main__":
    main()
