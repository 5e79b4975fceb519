"""The Kubernetes traffic switch through the official client, against a fake API server's real paths."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cellvault import Cell, Config, TargetSpec
from cellvault.errors import ConfigError, DrError
from cellvault.plugins import make_plugin_manager
from cellvault.traffic.k8s import K8sSwitch
from tests.servers.k8s import FakeKubeApi
from tests.system_tools import import_module

import_module("kubernetes", ".[k8s]")  # the k8s extra


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeApi]:
    server = FakeKubeApi().start()
    monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
    yield server
    server.stop()


def config(tmp_path: Path, **kwargs: str) -> Config:
    return Config(
        backup_dir=tmp_path / "backup",
        cells=[Cell("crm", [tmp_path / "crm"])],
        targets=[TargetSpec("local", str(tmp_path / "backup"))],
        **kwargs,  # type: ignore[arg-type]
    )


def switch(cfg: Config, site: str = "dr") -> list[object]:
    pm = make_plugin_manager(load_entry_points=False)
    return pm.hook.cellvault_switch_traffic(
        site=site, previous_site="primary", event="failover", config=cfg
    )


def test_a_service_selector_is_pointed_at_the_new_site(tmp_path: Path, api: FakeKubeApi) -> None:
    path = api.add_service("paas", "gateway", {"app": "gateway", "cellvault.io/site": "primary"})
    done = switch(config(tmp_path, dr_switch_k8s="service/paas/gateway"))
    assert done == ["Service paas/gateway selects cellvault.io/site=dr"]
    assert api.objects[path]["spec"]["selector"] == {"app": "gateway", "cellvault.io/site": "dr"}
    assert [(p, body) for p, _, body in api.patches] == [
        (path, {"spec": {"selector": {"cellvault.io/site": "dr"}}})
    ]
    # Idempotent: the same switch again changes nothing.
    switch(config(tmp_path, dr_switch_k8s="service/paas/gateway"))
    assert api.objects[path]["spec"]["selector"]["cellvault.io/site"] == "dr"


def test_an_ingress_routes_every_backend_to_the_sites_service(
    tmp_path: Path, api: FakeKubeApi
) -> None:
    path = api.add_ingress("paas", "web", "gateway-primary")
    done = switch(config(tmp_path, dr_switch_k8s="ingress/paas/web/gateway-{site}"))
    assert done == ["Ingress paas/web routes to Service gateway-dr"]
    rule = api.objects[path]["spec"]["rules"][0]
    assert rule["host"] == "paas.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"] == {
        "name": "gateway-dr",
        "port": {"number": 443},
    }


def test_a_missing_object_or_a_bad_setting_is_a_clear_error(
    tmp_path: Path, api: FakeKubeApi
) -> None:
    with pytest.raises(DrError, match="refused to patch service paas/nope: 404"):
        switch(config(tmp_path, dr_switch_k8s="service/paas/nope"))
    with pytest.raises(ConfigError, match="is not service/"):
        K8sSwitch.parse("deployment/paas/x")
    assert K8sSwitch.parse("service/a/b/tier").detail == "tier"
    assert switch(config(tmp_path)) == []  # not configured: nothing done
