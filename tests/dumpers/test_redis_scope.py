"""The redis dumper stores only the cell's database, not other tenants' (issue 16 item 5)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.dumpers.conftest import RedisDb, vault_for
from tests.helpers import clock


def test_only_the_cells_database_is_stored(tmp_path: Path, redis_db: RedisDb) -> None:
    redis_db.cli("SET", "mine", "cell data")
    redis_db.cli("SET", "other-tenant-secret", "not ours", db=15)
    try:
        vault = vault_for(
            tmp_path, [{"type": "redis", "name": "cache", "url": redis_db.url}], clock=clock()
        )
        assert vault.backup().ok
        report = vault.restore("latest", into=tmp_path / "out")
        assert report.ok, report.to_dict()
    finally:
        redis_db.cli("DEL", "other-tenant-secret", db=15)
    folder = next((tmp_path / "out").glob("crm.dumps")) / "cache"
    rdb = (folder / "dump.rdb").read_bytes()
    assert rdb.startswith(b"REDIS")
    assert b"mine" in rdb and b"other-tenant-secret" not in rdb
    info = json.loads((folder / "dumper.json").read_text())
    assert info["info"]["databases"] == [9], info
