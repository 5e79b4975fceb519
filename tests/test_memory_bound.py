"""Memory does not grow with the number of files (issue 15, item 3).

A generated cell of many tiny files goes through the command line in child
processes: a full backup, a no-change and a changed incremental, a restore
of the chain and each verify level. The peak resident set of each child
(``os.wait4``) must stay under a bound that the manifest held as objects
(about 2.4 KB per file) exceeds at this size: ``MEMORY_FILES`` files at
2.4 KB each is 290 MiB, plus the interpreter. The 2,000,000-file figures are
in docs/performance.md (``benchmarks/many_files.py``); this is not a timing
test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

#: Files of the generated cell, and the bound on any step's peak RSS (MiB).
MEMORY_FILES = 120_000
BOUND_MIB = 160

SRC = Path(__file__).resolve().parents[1] / "src"


def _generate(root: Path, files: int) -> None:
    for i in range(files):
        folder = root / f"d{i // 10000:02d}" / f"e{i // 100 % 100:02d}"
        if i % 100 == 0:
            folder.mkdir(parents=True)
        (folder / f"f{i:06d}").write_bytes(b"%d\n" % i)


# The peak is read by the child itself (VmHWM of its own memory, at exit): a parent's
# wait4 ru_maxrss would include the high-water mark of the (large) test process the
# child was spawned from, which exec carries over on Linux.
_WRAP = """
import atexit, runpy, sys
def _hwm_to(path):
    with open("/proc/self/status") as f:
        kib = next(int(x.split()[1]) for x in f if x.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(str(kib))
atexit.register(_hwm_to, sys.argv.pop(1))
sys.argv[0] = "cellvault"
runpy.run_module("cellvault", run_name="__main__", alter_sys=True)
"""


def _peak_mib(argv: list[str], env: dict[str, str]) -> float:
    with tempfile.NamedTemporaryFile("r", suffix=".hwm") as hwm:
        done = subprocess.run(
            [sys.executable, "-c", _WRAP, hwm.name, *argv],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        assert done.returncode == 0, (
            f"cellvault {' '.join(argv)} failed:\n{done.stdout.decode()[-3000:]}"
        )
        return int(hwm.read()) / 1024


@pytest.mark.timeout(900)
def test_peak_memory_stays_flat_with_many_files(tmp_path: Path) -> None:
    cells = tmp_path / "cells"
    _generate(cells / "crm", MEMORY_FILES)
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC),
        "BACKUP_DIR": str(tmp_path / "backup"),
        "BACKUP_CELLS": "crm",
        "BACKUP_CELLS_ROOT": str(cells),
        "BACKUP_TARGETS": "local",
        "CELLVAULT_LOAD_PLUGINS": "",
    }
    peaks = {"full backup": _peak_mib(["backup"], env)}
    peaks["no-change incremental"] = _peak_mib(["backup", "--type", "incremental"], env)
    for i in range(0, MEMORY_FILES, 1000):  # one file in a hundred changes
        path = cells / "crm" / f"d{i // 10000:02d}" / f"e{i // 100 % 100:02d}" / f"f{i:06d}"
        path.write_bytes(b"changed %d\n" % i)
    peaks["changed incremental"] = _peak_mib(["backup", "--type", "incremental"], env)
    out = tmp_path / "out"
    peaks["chain restore"] = _peak_mib(["restore", "--into", str(out)], env)
    for level in ("quick", "read", "full", "drill"):
        peaks[f"verify {level}"] = _peak_mib(["verify", "--level", level], env)
    print({step: round(mib) for step, mib in peaks.items()})  # shown with pytest -s
    over = {step: round(mib) for step, mib in peaks.items() if mib > BOUND_MIB}
    assert not over, (
        f"peak RSS over {BOUND_MIB} MiB at {MEMORY_FILES:,} files: {over} (all: {peaks})"
    )
    restored = sum(len(files) for _, _, files in os.walk(out))
    assert restored == MEMORY_FILES
    (changed,) = out.rglob("f001000")
    assert changed.read_bytes() == b"changed 1000\n"
