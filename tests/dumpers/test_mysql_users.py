"""``users = true``: a MariaDB dump carries the users and grants its database needs.

On the real server: a uniquely named user with privileges on the cell's
database (and others it does not need) is dumped, dropped, and restored with
its password and the grants on the cell's database only.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault.dumpers.myusers import users_sql
from tests.dumpers.conftest import MY_HOST, MY_PORT, MyDb, mysql, vault_for
from tests.dumpers.test_command import members, only_archive
from tests.helpers import clock


@pytest.fixture
def app_user(my: MyDb) -> Iterator[str]:
    """User ``cvstage_<hex>@%`` with a password, grants on the cell's database and beyond."""
    user = f"cvstage_{uuid.uuid4().hex[:8]}"
    other = my.other("elsewhere")
    mysql(
        f"CREATE TABLE `{my.name}`.t (i INT, j INT); CREATE DATABASE `{other}`;"
        f"CREATE USER '{user}'@'%' IDENTIFIED BY 'app-pw';"
        f"GRANT SELECT, INSERT ON `{my.name}`.* TO '{user}'@'%';"
        f"GRANT UPDATE (j) ON `{my.name}`.t TO '{user}'@'%';"
        f"GRANT SELECT ON `{other}`.* TO '{user}'@'%';"
        f"GRANT PROCESS ON *.* TO '{user}'@'%';"
    )
    yield user
    mysql(f"DROP USER IF EXISTS '{user}'@'%';")


def grants(user: str) -> list[str]:
    return sorted(mysql(f"SHOW GRANTS FOR '{user}'@'%';").splitlines())


def test_users_and_grants_come_back_on_a_server_that_lost_them(
    my: MyDb, app_user: str, tmp_path: Path
) -> None:
    dumper = {"type": "mysql", "name": "db", "dsn": my.dsn, "users": True}
    vault = vault_for(tmp_path, [dumper], clock=clock())
    assert vault.backup().ok
    got = members(only_archive(tmp_path / "backup"))
    stored = got["dumps/db/users.sql"].decode()
    assert f"CREATE USER IF NOT EXISTS `{app_user}`@`%` IDENTIFIED BY PASSWORD '*" in stored
    assert f"GRANT SELECT, INSERT ON `{my.name}`.* TO `{app_user}`@`%`;" in stored
    assert f"GRANT UPDATE (`j`) ON `{my.name}`.`t` TO `{app_user}`@`%`;" in stored
    assert "PROCESS" not in stored and "elsewhere" not in stored  # not the cell's
    assert f"'{app_user}'@'%'" in json.loads(got["dumps/db/dumper.json"])["info"]["users"]

    mysql(f"DROP USER '{app_user}'@'%';")  # a fresh standby knows no such user
    report = vault.restore("latest", skip_prebackup=True)
    assert report.ok, report.to_dict()
    assert grants(app_user) == sorted(
        [
            f"GRANT USAGE ON *.* TO `{app_user}`@`%` IDENTIFIED BY PASSWORD "
            + stored.split("IDENTIFIED BY PASSWORD ")[1].split(";")[0],
            f"GRANT SELECT, INSERT ON `{my.name}`.* TO `{app_user}`@`%`",
            f"GRANT UPDATE (`j`) ON `{my.name}`.`t` TO `{app_user}`@`%`",
        ]
    )
    # The password came back too: the application logs in with it.
    client = shutil.which("mariadb") or "mysql"
    login = subprocess.run(
        [client, "-h", MY_HOST, "-P", str(MY_PORT), "-u", app_user, "-papp-pw", "-N", "-B",
         "-e", f"SELECT COUNT(*) FROM `{my.name}`.t;"],  # noqa: S608 - a generated name
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert login.returncode == 0, login.stderr
    assert login.stdout.strip() == "0"


def test_users_sql_keeps_only_the_grants_on_the_databases() -> None:
    text = users_sql(
        "CREATE USER `a`@`%` IDENTIFIED BY PASSWORD '*AB'",
        [
            "GRANT USAGE ON *.* TO `a`@`%` IDENTIFIED BY PASSWORD '*AB'",
            "GRANT ALL PRIVILEGES ON `crm`.* TO `a`@`%`",
            "GRANT EXECUTE ON PROCEDURE `crm`.`total` TO `a`@`%`",
            "GRANT SELECT ON `crm2`.* TO `a`@`%`",
        ],
        ["crm"],
    )
    assert text.splitlines() == [
        "CREATE USER IF NOT EXISTS `a`@`%` IDENTIFIED BY PASSWORD '*AB';",
        "GRANT ALL PRIVILEGES ON `crm`.* TO `a`@`%`;",
        "GRANT EXECUTE ON PROCEDURE `crm`.`total` TO `a`@`%`;",
    ]
    with pytest.raises(ValueError, match="unexpected SHOW CREATE USER"):
        users_sql("GRANT x", [], ["crm"])
