"""examples/fleet/: the worker's systemd unit, the DaemonSet and the restore pool run real commands."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import click

from cellvault.cli import cli
from tests.system_tools import import_module

FLEET = Path(__file__).resolve().parents[2] / "examples" / "fleet"


def _parses(args: list[str]) -> click.Context:
    """*args* (after the program name) as the command line would parse them."""
    at = args.index("fleet")
    known = {opt for param in cli.params for opt in param.opts}
    assert all(a in known for a in args[:at] if a.startswith("-")), args[:at]
    fleet = cli.commands["fleet"]
    assert isinstance(fleet, click.Group)
    name, *options = args[at + 1 :]
    return fleet.commands[name].make_context(name, options)


def test_the_systemd_unit_starts_a_worker() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read_string((FLEET / "cellvault-fleet-worker.service").read_text())
    argv = shlex.split(unit["Service"]["ExecStart"])
    assert argv[0].endswith("/cellvault")
    ctx = _parses(argv[1:])
    assert ctx.info_name == "worker" and ctx.params["concurrency"] == 2
    assert unit["Service"]["Restart"] == "always"


def test_the_daemonset_and_the_restore_pool() -> None:
    yaml = import_module("yaml", ".[test]")  # PyYAML (the test extra) reads the examples
    (daemonset,) = yaml.safe_load_all((FLEET / "worker-daemonset.yaml").read_text())
    (pool,) = yaml.safe_load_all((FLEET / "restore-pool.yaml").read_text())
    assert (daemonset["kind"], pool["kind"]) == ("DaemonSet", "Deployment")
    for doc, is_pool in ((daemonset, False), (pool, True)):
        (container,) = doc["spec"]["template"]["spec"]["containers"]
        ctx = _parses(container["args"])
        assert ctx.info_name == "worker"
        assert ctx.params["pool"] is is_pool
        env = {e["name"] for e in container["env"]}
        assert {"CELLVAULT_FLEET_HOST", "CELLVAULT_BROKER_URL"} <= env
    # The pool's workers spread over nodes: on one node they share its disk.
    (term,) = pool["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert (
        term["podAffinityTerm"]["labelSelector"]["matchLabels"]
        == pool["spec"]["selector"]["matchLabels"]
    )
