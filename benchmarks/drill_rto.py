"""The drill's RTO against a real restore's, for a cell of files, PostgreSQL, MariaDB and Redis.

    python benchmarks/drill_rto.py [--files-mib 64] [--rows 200000] [--keys 50000] [--repeat 3]

Builds one cell on the machine's servers (PostgreSQL 127.0.0.1:5432, MariaDB
127.0.0.1:3306 as root, Redis 127.0.0.1:6379 databases 6 and 7; the
databases get a unique name and are dropped at the end), backs it up once,
then alternates, *repeat* times: ``verify --level drill`` (its RTO: fetch,
check, every dump loaded into a scratch database, health checks) and an
in-place restore of the same archive without a safety backup, as on a
standby after a disaster: its RTO is the time until the cell is swapped in
(the ``restore.swapped`` event: plan, stage, loads, swap), and its report's
duration adds dropping the replaced databases and the health checks. Prints
the medians, the ratio drill / restore RTO and each pair's ratio. Results go in
docs/performance.md; nothing here is a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

# ruff: noqa: S608 - every name in the SQL below is generated here
from cellvault import Cell
from cellvault.config import Config
from cellvault.vault import Vault

PG = "postgresql://postgres@127.0.0.1:5432"
MY = "mysql://root@127.0.0.1:3306"
REDIS_DB, SPARE_DB = 6, 7


def sh(argv: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def psql(sql: str, db: str = "postgres") -> str:
    return sh(["psql", "-h", "127.0.0.1", "-U", "postgres", "-At", "-d", db], sql)


def mysql(sql: str) -> str:
    return sh(
        [shutil.which("mariadb") or "mysql", "-h", "127.0.0.1", "-u", "root", "-N", "-B"], sql
    )


def redis(*args: str, db: int = REDIS_DB) -> str:
    return sh(["redis-cli", "-n", str(db), *args])


def build(base: Path, name: str, files_mib: int, rows: int, keys: int) -> Vault:
    cell = base / "cells" / name
    cell.mkdir(parents=True)
    for i in range(files_mib):
        (cell / f"blob-{i:04d}.bin").write_bytes(os.urandom(1 << 20))
    psql(f'CREATE DATABASE "{name}";')
    psql(
        f"CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) "
        f"FROM generate_series(1, {rows}) g;",
        name,
    )
    mysql(
        f"SET max_recursive_iterations = {rows + 1}; CREATE DATABASE `{name}`; CREATE TABLE `{name}`.t (id INT PRIMARY KEY, v TEXT) "
        f"ENGINE=InnoDB; INSERT INTO `{name}`.t WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL "
        f"SELECT n + 1 FROM s WHERE n < {rows}) SELECT n, MD5(n) FROM s;"
    )
    for db in (REDIS_DB, SPARE_DB):
        if redis("DBSIZE", db=db) != "0":
            raise SystemExit(f"Redis database {db} is not empty: choose a quiet moment")
    script = "for i=1,tonumber(ARGV[1]) do redis.call('SET', 'k'..i, string.rep('x', 100)) end"
    redis("EVAL", script, "0", str(keys))
    dumpers = [
        {"type": "postgres", "name": "pg", "dsn": f"{PG}/{name}", "mode": "replace",
         "terminate": True},
        {"type": "mysql", "name": "my", "dsn": f"{MY}/{name}"},
        {"type": "redis", "name": "cache", "url": f"redis://127.0.0.1:6379/{REDIS_DB}",
         "swap_db": SPARE_DB},
    ]  # fmt: skip
    config = Config(backup_dir=base / "backup", cells=[Cell(name, [cell], dumpers=dumpers)])
    return Vault(config, load_entry_points=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files-mib", type=int, default=64)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--keys", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    name = f"cvbench_{uuid.uuid4().hex[:8]}"
    base = Path(tempfile.mkdtemp(prefix="cellvault-drill-rto-"))
    try:
        vault = build(base, name, args.files_mib, args.rows, args.keys)
        assert vault.backup().ok
        drills, swapped, restores = [], [], []
        marks: dict[str, float] = {}
        vault.on_event = lambda e: marks.setdefault(e.name, time.monotonic())
        for _ in range(args.repeat):
            report = vault.verify(level="drill")
            (result,) = report.results
            assert result.ok and result.rto is not None, report.to_dict()
            drills.append(result.rto)
            marks.clear()
            started = time.monotonic()
            done = vault.restore("latest", cells=[name], skip_prebackup=True)
            assert done.ok, done.to_dict()
            swapped.append(marks["restore.swapped"] - started)
            restores.append(done.duration)
            print(
                f"drill {drills[-1]:.2f} s, restore swapped in at {swapped[-1]:.2f} s, "
                f"done at {restores[-1]:.2f} s",
                flush=True,
            )
        drill, live, real = (statistics.median(x) for x in (drills, swapped, restores))
        pairs = ", ".join(f"{d / r:.2f}" for d, r in zip(drills, swapped, strict=True))
        print(
            f"| {args.files_mib} MiB files, {args.rows} rows x 2, {args.keys} keys "
            f"| {drill:.2f} s | {live:.2f} s | {real:.2f} s | {drill / live:.2f} | {pairs} |"
        )
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')
        for row in psql(
            f"SELECT datname FROM pg_database WHERE datname LIKE '{name}_cv%';"
        ).split():
            psql(f'DROP DATABASE IF EXISTS "{row}" WITH (FORCE);')
        for row in mysql(f"SHOW DATABASES LIKE '{name}%';").split():
            mysql(f"DROP DATABASE IF EXISTS `{row}`;")
        for db in (REDIS_DB, SPARE_DB):
            redis("FLUSHDB", db=db)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
