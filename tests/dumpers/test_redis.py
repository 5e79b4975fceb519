"""The redis dumper against the machine's real Redis (database 9 only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellvault import Cell
from cellvault.dumpers.redis import RedisDumper
from tests.dumpers.conftest import Alerts, RedisDb, vault_for
from tests.dumpers.test_command import members, only_archive
from tests.helpers import clock, write_tree


def fill(r: RedisDb) -> dict[str, str]:
    r.cli("SET", "plain", "value with spaces")
    r.cli("SET", "binary", "\x01\x02é")
    r.cli("HSET", "hash", "f1", "v1", "f2", "v2")
    r.cli("RPUSH", "list", "a", "b", "c")
    r.cli("SADD", "set", "x", "y")
    r.cli("ZADD", "zset", "1", "one", "2", "two")
    r.cli("XADD", "stream", "1-1", "field", "value")
    r.cli("SET", "expiring", "soon", "EX", "5000")
    return state(r)


def state(r: RedisDb) -> dict[str, str]:
    """Every key of the database: its type and value."""
    out = {}
    for key in r.cli("KEYS", "*").split():
        kind = r.cli("TYPE", key)
        value = {
            "string": lambda k: r.cli("GET", k),
            "hash": lambda k: r.cli("HGETALL", k),
            "list": lambda k: r.cli("LRANGE", k, "0", "-1"),
            "set": lambda k: " ".join(sorted(r.cli("SMEMBERS", k).split())),
            "zset": lambda k: r.cli("ZRANGE", k, "0", "-1", "WITHSCORES"),
            "stream": lambda k: r.cli("XRANGE", k, "-", "+"),
        }[kind](key)
        out[key] = f"{kind}:{value}"
    return out


def redis_dumper(r: RedisDb, **options: object) -> dict[str, object]:
    return {"type": "redis", "name": "cache", "url": r.url, **options}


def test_keys_round_trip(redis_db: RedisDb, tmp_path: Path) -> None:
    # Each backup waits for the server's repl-diskless-sync-delay (5 s by default):
    # this test restores one backup in every way.
    original = fill(redis_db)
    other_key = f"cellvault-test-{tmp_path.name}"
    redis_db.cli("SET", other_key, "before", db=10)
    target = RedisDb(db=11)
    target.cli("FLUSHDB")
    try:
        vault = vault_for(tmp_path, [redis_dumper(redis_db)], clock=clock())
        report = vault.backup()
        assert report.ok, report.cells[0].error
        got = members(only_archive(tmp_path / "backup"))
        assert got["dumps/cache/dump.rdb"].startswith(b"REDIS")
        assert json.loads(got["dumps/cache/dumper.json"])["info"]["rdb_version"]

        redis_db.cli("DEL", "plain", "hash")
        redis_db.cli("RPUSH", "list", "changed")
        redis_db.cli("SET", "added_later", "x")
        redis_db.cli("SET", other_key, "after", db=10)
        report = vault.restore("latest")
        assert report.ok, report.cells[0].error
        assert state(redis_db) == original  # exactly: the key added later is gone
        ttl = int(redis_db.cli("TTL", "expiring"))
        assert 4900 < ttl <= 5000
        # Only database 9 was restored: the others are as they were.
        assert redis_db.cli("GET", other_key, db=10) == "after"

        # Into another database.
        report = vault.restore("latest", dump_options={"cache": {"restore_db": 11}})
        assert report.ok, report.cells[0].error
        assert state(target) == original

        # Loaded beside the target, then swapped in at once.
        redis_db.cli("FLUSHDB")
        redis_db.cli("SET", "new", "x")
        assert redis_db.cli("DBSIZE", db=15) == "0", "database 15 is in use on this Redis"
        report = vault.restore("latest", dump_options={"cache": {"swap_db": 15}})
        assert report.ok, report.cells[0].error
        assert state(redis_db) == original
        assert redis_db.cli("DBSIZE", db=15) == "0"
    finally:
        redis_db.cli("DEL", other_key, db=10)
        target.cli("FLUSHDB")


def test_an_unreachable_server_fails_that_cell_only(
    redis_db: RedisDb, tmp_path: Path, alerts: Alerts
) -> None:
    redis_db.cli("SET", "k", "v")
    bad = {"type": "redis", "name": "cache", "url": "redis://:hunter2-secret@127.0.0.1:1/9"}
    billing = Cell("billing", [write_tree(tmp_path / "cells" / "billing", {"a": "b"})])
    vault = vault_for(tmp_path, [bad], cells=[billing], plugins=[alerts], clock=clock())
    report = vault.backup()
    by_cell = {c.cell: c for c in report.cells}
    assert by_cell["billing"].ok, by_cell["billing"].error
    crm = by_cell["crm"]
    assert not crm.ok and crm.stage == "dump" and "redis-cli --rdb" in (crm.error or "")
    assert "hunter2" not in (crm.error or "")
    assert [f.stage for f in alerts.failures if f.cell == "crm"] == ["dump"]


def test_options_are_checked() -> None:
    with pytest.raises(Exception, match="restore_db needs exactly one db"):
        RedisDumper(name="c", url="redis://h/9", db=[1, 2], restore_db=3)
    with pytest.raises(Exception, match="swap_db must be a database that is not restored"):
        RedisDumper(name="c", url="redis://h/9", swap_db=9)
    dumper = RedisDumper(name="c", url="redis://u:pw-secret@h:7000/9")
    assert (dumper.host, dumper.port, dumper.db, dumper.username) == ("h", 7000, (9,), "u")
    assert "pw-secret" not in json.dumps(dumper.describe()) and "pw-secret" not in repr(dumper)
