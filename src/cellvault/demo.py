"""The demo: two sample cells backed up, verified and restored in a scratch directory.

``cellvault demo`` runs it; it needs no configuration and touches nothing
outside the directory it is given.
"""

from __future__ import annotations

import filecmp
import os
from pathlib import Path

import attrs

from .cell import Cell
from .config import Config
from .report import BackupReport, RestoreReport, VerifyReport
from .vault import Vault

__all__ = ["DemoResult", "make_sample_cells", "run_demo"]


@attrs.frozen
class DemoResult:
    root: Path
    cells_dir: Path
    backup_dir: Path
    restored_dir: Path
    backup: BackupReport
    verify: VerifyReport
    restore: RestoreReport
    identical: bool

    @property
    def ok(self) -> bool:
        return self.backup.ok and self.verify.ok and self.restore.ok and self.identical


def make_sample_cells(where: Path) -> list[Cell]:
    """Write two small cells, ``crm`` and ``billing``, under *where*."""
    crm = where / "crm"
    (crm / "uploads" / "2025").mkdir(parents=True, exist_ok=True)
    (crm / "cache").mkdir(exist_ok=True)
    (crm / "empty").mkdir(exist_ok=True)
    (crm / "config.yaml").write_text("service: crm\nreplicas: 2\n")
    (crm / "uploads" / "2025" / "contract-0001.txt").write_text("Contract 0001\n" * 200)
    (crm / "uploads" / "2025" / "logo.bin").write_bytes(os.urandom(64 * 1024))
    (crm / "cache" / "session.tmp").write_text("not worth keeping\n")
    link = crm / "current-config"
    if not link.is_symlink():
        link.symlink_to("config.yaml")
    billing = where / "billing"
    (billing / "invoices").mkdir(parents=True, exist_ok=True)
    for n in range(1, 21):
        (billing / "invoices" / f"INV-{n:04d}.csv").write_text(f"invoice,{n}\namount,{n * 100}\n")
    (billing / "ledger.db").write_bytes(b"\x00LEDGER" * 4096)
    return [
        Cell("crm", [crm], exclude=["*.tmp"]),
        Cell("billing", [billing]),
    ]


def _same_tree(a: Path, b: Path, ignore: list[str]) -> bool:
    cmp = filecmp.dircmp(a, b, ignore=ignore)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(a / d, b / d, ignore) for d in cmp.common_dirs)


def run_demo(root: Path) -> DemoResult:
    """Create sample cells in *root*, back them up, verify, restore elsewhere, compare."""
    root = root.absolute()
    cells_dir, backup_dir, restored = root / "cells", root / "backup", root / "restored"
    cells = make_sample_cells(cells_dir)
    vault = Vault(Config(backup_dir=backup_dir, cells=cells), load_entry_points=False)
    backup = vault.backup(reason="demo")
    verify = vault.verify()
    restore = (
        vault.restore("latest", into=restored)
        if backup.ok
        else RestoreReport((), 0.0, "backup failed")
    )
    identical = restore.ok and all(
        _same_tree(cell.paths[0], restored / cell.name / cell.paths[0].name, ignore=["session.tmp"])
        for cell in cells
    )
    return DemoResult(root, cells_dir, backup_dir, restored, backup, verify, restore, identical)
