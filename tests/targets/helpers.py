"""What the target tests share: a small cell, a vault over it, target specs of the test servers."""

from __future__ import annotations

import random
from pathlib import Path

from cellvault import Cell, Config, TargetSpec, Vault
from tests.servers.fixtures import OssBucket, S3Bucket


def make_cell(root: Path, big: int = 0) -> Path:
    live = root / "crm"
    (live / "docs").mkdir(parents=True)
    (live / "docs" / "a.txt").write_text("alpha\n" * 100)
    (live / "empty").mkdir()
    (live / "link").symlink_to("docs/a.txt")
    if big:
        (live / "big.bin").write_bytes(random.Random(1).randbytes(big))
    return live


def vault_for(tmp_path: Path, live: Path, *specs: TargetSpec, **kwargs: object) -> Vault:
    backup_dir = tmp_path / "backup"
    targets = [TargetSpec("local", str(backup_dir)), *specs]
    return Vault(
        Config(backup_dir=backup_dir, cells=[Cell("crm", [live])], targets=targets),
        load_entry_points=False,
        **kwargs,
    )  # type: ignore[arg-type]


def committed(objects: dict[str, bytes]) -> list[str]:
    return sorted(
        k for k in objects if k.endswith(".json") and "/cell_" in k and ".manifest" not in k
    )


def s3_spec(bucket: S3Bucket, **extra: object) -> TargetSpec:
    options = {**bucket.storage_options, "skip_instance_cache": True, **extra}
    return TargetSpec("s3", f"{bucket.url}/backups", options)


def oss_spec(bucket: OssBucket) -> TargetSpec:
    return TargetSpec(
        "oss", f"{bucket.url}/backups", {**bucket.storage_options, "skip_instance_cache": True}
    )
