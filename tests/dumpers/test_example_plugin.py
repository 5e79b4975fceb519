"""The third-party dumper of examples/dumper_plugin, found through a real entry point.

Nothing is installed: the example's ``src/`` goes on ``sys.path`` beside a
``.dist-info`` folder whose ``entry_points.txt`` is made from the example's
own ``pyproject.toml``, which is all ``importlib.metadata`` looks for.
"""

from __future__ import annotations

import sqlite3
import sys
import tomllib
from pathlib import Path

import pytest

from cellvault import Vault, load_toml
from tests.dumpers.test_command import members, only_archive
from tests.helpers import write_tree

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "dumper_plugin"


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The example package, importable and declared as an installed distribution."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    entry_points = project["entry-points"]["cellvault"]
    site = tmp_path / "site"
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cellvault]\n{lines}")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.delitem(sys.modules, "cellvault_sqlitesql", raising=False)
    (name,) = entry_points
    return str(name)


def test_backup_and_restore_with_the_example_dumper(
    installed: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", {"config.yaml": "x\n"})
    db_path = crm / "app.sqlite"
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        db.executemany(
            "INSERT INTO notes (body) VALUES (?)", [(f"note {i}\n'quoted'",) for i in range(500)]
        )
    db.close()
    config = tmp_path / "cellvault.toml"
    config.write_text(
        f"""
backup_dir = "{tmp_path / "backup"}"
[cells.crm]
paths = ["{crm}"]
exclude = ["app.sqlite*"]          # the dumper keeps the database, consistently
[[cells.crm.dumpers]]
type = "sqlite-sql"
name = "app"
path = "{db_path}"
"""
    )
    # Only the example's entry point, as CELLVAULT_LOAD_PLUGINS would choose it.
    monkeypatch.setenv("CELLVAULT_LOAD_PLUGINS", installed)
    vault = Vault(load_toml(config))
    assert installed in dict(vault.plugins.list_name_plugin())
    assert type(vault.dumpers["crm"][0]).__name__ == "SqliteSqlDumper"

    report = vault.backup()
    assert report.ok, report.cells[0].error
    got = members(only_archive(tmp_path / "backup"))
    assert b"INSERT INTO \"notes\" VALUES(1,'note 0\n''quoted''');" in got["dumps/app/app.sql"]
    assert "data/crm/app.sqlite" not in got

    db_path.unlink()
    report = vault.restore("latest")
    assert report.ok, report.cells[0].error
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*), max(body) FROM notes").fetchone() == (
            500,
            "note 99\n'quoted'",
        )
    db.close()


def test_without_the_entry_point_the_type_is_unknown(tmp_path: Path) -> None:
    crm = write_tree(tmp_path / "cells" / "crm", {"a": "b"})
    config = tmp_path / "cellvault.toml"
    config.write_text(
        f'backup_dir = "{tmp_path / "b"}"\n[cells.crm]\npaths = ["{crm}"]\n'
        '[[cells.crm.dumpers]]\ntype = "sqlite-sql"\npath = "/x.db"\n'
    )
    with pytest.raises(Exception, match="no dumper type handles dumper sqlite-sql"):
        Vault(load_toml(config))
