"""Plugins: target types from code and from real entry points, the failure hook, other hooks."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

import pytest

from cellvault import (
    Cell,
    Config,
    ConfigError,
    Failure,
    LocalTarget,
    Target,
    TargetSpec,
    Vault,
    hookimpl,
)
from cellvault.plugins import PluginOutcome, make_plugin_manager
from tests.helpers import SAMPLE, MemPlugin, MemTarget, clock, make_vault, snapshot, write_tree


@pytest.fixture
def crm(cells_root: Path) -> Path:
    return write_tree(cells_root / "crm", SAMPLE)


def mem_url() -> str:
    return f"mem://bucket-{uuid.uuid4().hex[:8]}/backups"


# -- a target type registered in code -------------------------------------------------------


def test_plugin_in_code_adds_a_target_type(crm: Path, backup_dir: Path, tmp_path: Path) -> None:
    url = mem_url()
    targets = [TargetSpec("local", str(backup_dir)), TargetSpec("mem", url)]
    vault = make_vault(
        backup_dir, {"crm": [crm]}, targets=targets, plugins=[MemPlugin()], clock=clock()
    )
    assert isinstance(vault.target("mem"), MemTarget)

    cell = vault.backup().cells[0]
    assert cell.ok, cell.error
    assert [(t.target, t.ok, t.verified) for t in cell.targets] == [
        ("local", True, True),
        ("mem", True, True),
    ]
    keys = set(MemTarget.STORES[url])
    assert {f"crm/{cell.archive}.tar.zst", f"crm/{cell.archive}.json"} <= keys
    assert not any(k.startswith(".locks/") for k in keys)  # the lease was released

    # Restore through the plugin's target alone.
    out = tmp_path / "out"
    report = vault.restore("latest", into=out, source=["mem"])
    assert report.ok and report.cells[0].target == "mem"
    assert snapshot(out / "crm" / "crm") == snapshot(crm)
    assert vault.verify(targets=["mem"]).ok


def test_only_a_plugin_target(crm: Path, backup_dir: Path) -> None:
    url = mem_url()
    vault = make_vault(
        backup_dir,
        {"crm": [crm]},
        targets=[TargetSpec("mem", url)],
        plugins=[MemPlugin()],
        clock=clock(),
    )
    assert vault.backup().ok
    (crm / "config.yaml").write_text("changed\n")
    assert vault.backup(kind="incremental").cells[0].files == 1
    (crm / "config.yaml").write_text("broken\n")
    report = vault.restore("latest", cells=["crm"])
    assert report.ok
    # The safety backup went to the first target: the plugin's.
    assert report.cells[0].safety_backup in {a.id for a in vault.list()}
    assert (crm / "config.yaml").read_text() == "changed\n"


def test_unknown_scheme_without_its_plugin(backup_dir: Path, crm: Path) -> None:
    with pytest.raises(ConfigError, match="no target type handles mem://") as info:
        make_vault(backup_dir, {"crm": [crm]}, targets=[TargetSpec("mem", "mem://x")])
    assert "plugin" in (info.value.hint or "")


def test_a_later_plugin_takes_over_a_scheme(backup_dir: Path, crm: Path) -> None:
    class MyLocal(LocalTarget):
        pass

    class Override:
        @hookimpl
        def cellvault_make_target(self, spec: TargetSpec) -> Target | None:
            return MyLocal(spec) if spec.scheme == "" else None

    vault = make_vault(backup_dir, {"crm": [crm]}, plugins=[Override()], clock=clock())
    assert type(vault.targets[0]) is MyLocal
    assert vault.backup().ok


def test_builtins_register_through_the_same_hook() -> None:
    pm = make_plugin_manager(load_entry_points=False)
    names = {name for name, _ in pm.list_name_plugin()}
    assert {"cellvault.targets.local", "cellvault.targets.fsspec"} <= names
    impls = {i.plugin_name for i in pm.hook.cellvault_make_target.get_hookimpls()}
    assert {"cellvault.targets.local", "cellvault.targets.fsspec"} <= impls
    assert isinstance(pm.hook.cellvault_make_target(spec=TargetSpec("local", "/b")), LocalTarget)


def test_a_plugin_with_a_wrong_hook_is_refused() -> None:
    class Wrong:
        @hookimpl
        def cellvault_make_target(self, spec: TargetSpec, extra: int) -> None:
            return None

    with pytest.raises(Exception, match="extra"):
        make_plugin_manager([Wrong()], load_entry_points=False)


# -- plugins found through real entry points ----------------------------------------------------


def install_plugin(
    site: Path, dist: str, module: str, body: str, *, ep_name: str | None = None
) -> None:
    """Write an installed distribution (dist-info, entry point) and its module into *site*."""
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[cellvault]\n{ep_name or dist} = {module}\n")
    (site / f"{module}.py").write_text(textwrap.dedent(body))


MEM_PLUGIN = """
    from cellvault import hookimpl
    from tests.helpers import MemTarget

    LOADED = True

    @hookimpl
    def cellvault_make_target(spec):
        return MemTarget(spec) if spec.scheme == "mem" else None
"""


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path holding an installed plugin distribution, ``myplugin``."""
    site = tmp_path / "site"
    site.mkdir()
    module = f"myplugin_mod_{uuid.uuid4().hex[:8]}"  # fresh: no module cached from another test
    install_plugin(site, "myplugin", module, MEM_PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    return site


def mem_config(backup_dir: Path, crm: Path) -> Config:
    return Config(
        backup_dir=backup_dir, cells=[Cell("crm", [crm])], targets=[TargetSpec("mem", mem_url())]
    )


def test_entry_point_plugin_loads_when_unrestricted(
    site: Path, backup_dir: Path, crm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELLVAULT_LOAD_PLUGINS", raising=False)
    vault = Vault(mem_config(backup_dir, crm), clock=clock())
    assert isinstance(vault.targets[0], MemTarget)
    assert "myplugin" in {name for name, _ in vault.plugins.list_name_plugin()}
    assert vault.plugins.get_plugin("myplugin").LOADED is True
    assert vault.backup().ok


def test_entry_point_plugin_loads_when_named(
    site: Path, backup_dir: Path, crm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLVAULT_LOAD_PLUGINS", " myplugin ")
    vault = Vault(mem_config(backup_dir, crm), clock=clock())
    assert isinstance(vault.targets[0], MemTarget)
    # The environment can also be given explicitly.
    pm = make_plugin_manager(environ={"CELLVAULT_LOAD_PLUGINS": "myplugin"})
    assert pm.get_plugin("myplugin") is not None


def test_empty_load_plugins_loads_none(
    site: Path, backup_dir: Path, crm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLVAULT_LOAD_PLUGINS", "")
    with pytest.raises(ConfigError, match="no target type handles"):
        Vault(mem_config(backup_dir, crm))
    pm = make_plugin_manager()
    assert pm.get_plugin("myplugin") is None
    # load_entry_points=False loads none whatever the variable says.
    monkeypatch.delenv("CELLVAULT_LOAD_PLUGINS")
    assert make_plugin_manager(load_entry_points=False).get_plugin("myplugin") is None


def test_other_plugins_are_not_loaded_when_one_is_named(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(site, "otherplugin", f"other_mod_{uuid.uuid4().hex[:8]}", "LOADED = True\n")
    monkeypatch.setenv("CELLVAULT_LOAD_PLUGINS", "otherplugin")
    pm = make_plugin_manager()
    assert pm.get_plugin("otherplugin") is not None
    assert pm.get_plugin("myplugin") is None


def test_naming_a_plugin_that_is_not_installed(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLVAULT_LOAD_PLUGINS", "myplugin,nosuchplugin")
    with pytest.raises(ConfigError, match="'nosuchplugin'") as info:
        make_plugin_manager()
    assert "myplugin" in (info.value.hint or "")


@pytest.mark.parametrize("restrict", [None, "broken"])
def test_a_plugin_failing_to_load_is_a_config_error(
    site: Path, monkeypatch: pytest.MonkeyPatch, restrict: str | None
) -> None:
    install_plugin(
        site, "broken", f"broken_mod_{uuid.uuid4().hex[:8]}", "raise ImportError('needs libfoo')\n"
    )
    if restrict is None:
        monkeypatch.delenv("CELLVAULT_LOAD_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("CELLVAULT_LOAD_PLUGINS", restrict)
    with pytest.raises(ConfigError, match="needs libfoo") as info:
        make_plugin_manager()
    assert "CELLVAULT_LOAD_PLUGINS" in (info.value.hint or "")


def test_entry_point_plugin_from_the_command_line(
    site: Path, backup_dir: Path, crm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from click.testing import CliRunner

    from cellvault.cli import cli

    url = mem_url()
    toml = tmp_path / "cellvault.toml"
    toml.write_text(
        f'backup_dir = "{backup_dir}"\n[cells.crm]\npaths = ["{crm}"]\n'
        f'[targets.mem]\nurl = "{url}"\n'
    )
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--config", str(toml), "--json", "backup"], env={"CELLVAULT_LOAD_PLUGINS": "myplugin"}
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cells"][0]["targets"][0]["target"] == "mem"
    assert any(k.endswith(".json") for k in MemTarget.STORES[url])
    result = runner.invoke(cli, ["--config", str(toml), "list"], env={"CELLVAULT_LOAD_PLUGINS": ""})
    assert result.exit_code == 2
    assert "no target type handles mem://" in result.stderr
    assert "Traceback" not in result.output


# -- the failure hook and the other hooks -------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.failures: list[Failure] = []
        self.after: list[str] = []

    @hookimpl
    def cellvault_backup_failed(self, failure: Failure) -> None:
        self.failures.append(failure)

    @hookimpl
    def cellvault_after_backup(self, report) -> None:  # type: ignore[no-untyped-def]
        self.after.append(report.cell)


class Exploding:
    """Every notification hook raises."""

    @hookimpl
    def cellvault_backup_failed(self, failure: Failure) -> None:
        raise RuntimeError("the alert webhook is down")

    @hookimpl
    def cellvault_after_backup(self, report) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("after_backup exploded")

    @hookimpl
    def cellvault_after_restore(self, report) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("after_restore exploded")


def broken_nas(tmp_path: Path) -> Path:
    nas = tmp_path / "nas"
    nas.mkdir()
    (nas / "crm").write_text("a file where the cell's folder should be")
    return nas


@pytest.mark.parametrize("order", ["recorder-first", "exploding-first"])
def test_backup_failed_hook_gets_stage_cell_and_target(
    crm: Path, backup_dir: Path, tmp_path: Path, order: str
) -> None:
    nas = broken_nas(tmp_path)
    billing = write_tree(tmp_path / "cells" / "billing", {"a": "b"})
    recorder = Recorder()
    plugins = [recorder, Exploding()] if order == "recorder-first" else [Exploding(), recorder]
    targets = [TargetSpec("local", str(backup_dir)), TargetSpec("nas", str(nas))]
    vault = make_vault(
        backup_dir,
        {"crm": [crm], "billing": [billing]},
        targets=targets,
        plugins=plugins,
        clock=clock(),
    )
    report = vault.backup()

    # The alert that raised changed nothing: each cell ends as it would have.
    by_cell = {c.cell: c for c in report.cells}
    assert not by_cell["crm"].ok and by_cell["crm"].stage == "upload"
    assert [t.ok for t in by_cell["crm"].targets] == [True, False]
    assert by_cell["billing"].ok
    assert {a.cell for a in vault.list(targets=["local"])} == {"crm", "billing"}
    # The other notifier still heard about the failure, whatever the order.
    (failure,) = recorder.failures
    assert (failure.stage, failure.cell, failure.target, failure.operation) == (
        "upload",
        "crm",
        "nas",
        "backup",
    )
    assert failure.archive == by_cell["crm"].archive
    assert failure.run == report.run
    assert "nas" in failure.error
    assert sorted(recorder.after) == ["billing", "crm"]


def test_failure_hook_for_a_cell_that_cannot_be_read(backup_dir: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    vault = make_vault(
        backup_dir, {"crm": [tmp_path / "missing"]}, plugins=[recorder], clock=clock()
    )
    assert not vault.backup().ok
    (failure,) = recorder.failures
    assert (failure.stage, failure.cell, failure.target) == ("pack", "crm", None)


def test_failure_hook_on_verify_and_restore(crm: Path, backup_dir: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    vault = make_vault(backup_dir, {"crm": [crm]}, plugins=[recorder, Exploding()], clock=clock())
    archive = vault.backup().cells[0].archive
    data = backup_dir / "crm" / f"{archive}.tar.zst"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.unlink()
    data.write_bytes(bytes(raw))
    assert not vault.verify().ok
    assert [(f.operation, f.stage, f.target) for f in recorder.failures] == [
        ("verify", "verify", "local")
    ]
    report = vault.restore("latest", into=tmp_path / "out")  # after_restore raises: logged only
    assert not report.ok
    assert recorder.failures[-1].operation == "restore" and recorder.failures[-1].cell == "crm"


def test_after_hooks_that_raise_do_not_change_results(
    crm: Path, backup_dir: Path, tmp_path: Path
) -> None:
    vault = make_vault(backup_dir, {"crm": [crm]}, plugins=[Exploding()], clock=clock())
    assert vault.backup().ok
    assert vault.restore("latest", into=tmp_path / "out").ok


def test_before_backup_hook_that_raises_fails_the_cell(
    crm: Path, backup_dir: Path, tmp_path: Path
) -> None:
    billing = write_tree(tmp_path / "cells" / "billing", {"a": "b"})
    seen = []

    class Pause:
        @hookimpl
        def cellvault_before_backup(self, cell: Cell, archive: str) -> None:
            seen.append(archive)
            if cell.name == "crm":
                raise RuntimeError("could not pause the crm writers")

    vault = make_vault(
        backup_dir, {"crm": [crm], "billing": [billing]}, plugins=[Pause()], clock=clock()
    )
    report = vault.backup()
    by_cell = {c.cell: c for c in report.cells}
    assert by_cell["crm"].stage == "hook" and "pause the crm writers" in (
        by_cell["crm"].error or ""
    )
    assert by_cell["billing"].ok
    assert sorted(seen) == sorted([by_cell["billing"].archive, "cell_crm_" + report.stamp])
    assert [a.cell for a in vault.list()] == ["billing"]


class _Raising:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    def cellvault_run_finished(self, operation, report, config):  # type: ignore[no-untyped-def]
        self.calls.append("raising")
        raise RuntimeError("boom")


class _Returning:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl
    def cellvault_run_finished(self, operation, report, config):  # type: ignore[no-untyped-def]
        self.calls.append("value")
        return 5


class _Wrapper:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @hookimpl(wrapper=True)
    def cellvault_run_finished(self, operation, report, config):  # type: ignore[no-untyped-def]
        self.calls.append("wrap")
        return (yield)


def _ours(outcomes: list[PluginOutcome]) -> list[PluginOutcome]:
    return [o for o in outcomes if not o.plugin.startswith("cellvault.")]


def test_call_each_calls_every_plugin_on_its_own_through_pluggy() -> None:
    """Each plugin once, in pluggy's order; one that raises does not stop the next; wrappers wrap each call."""
    from cellvault.plugins import call_each, make_plugin_manager

    calls: list[str] = []
    pm = make_plugin_manager(
        [_Raising(calls), _Returning(calls), _Wrapper(calls)], load_entry_points=False
    )
    outcomes = call_each(pm, "cellvault_run_finished", operation="x", report=None, config=None)
    ours = _ours(outcomes)
    assert [(o.ok, o.result) for o in ours] == [(True, 5), (False, None)]
    assert isinstance(ours[1].exception, RuntimeError)
    assert calls.count("value") == 1 and calls.count("raising") == 1
    # The wrapper wrapped every plugin's call, the built-in notifiers' included.
    assert calls.count("wrap") == len(outcomes)


def test_call_each_still_calls_a_plugin_that_cannot_be_hashed() -> None:
    """pluggy's subset callers hash plugins: an attrs value with eq is still called (directly)."""
    import attrs

    from cellvault.plugins import call_each, make_plugin_manager

    @attrs.define  # eq=True: instances cannot be hashed
    class Value:
        seen: list[str]

        @hookimpl
        def cellvault_run_finished(self, operation, report, config):  # type: ignore[no-untyped-def]
            self.seen.append(operation)
            return 7

    calls: list[str] = []
    pm = make_plugin_manager([Value(calls), _Raising(calls)], load_entry_points=False)
    ours = _ours(call_each(pm, "cellvault_run_finished", operation="x", report=None, config=None))
    assert [(o.ok, o.result) for o in ours] == [(False, None), (True, 7)]
    assert calls == ["raising", "x"]
