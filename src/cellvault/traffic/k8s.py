"""The Kubernetes traffic switch: ``DR_SWITCH_K8S``, a Service or an Ingress patched.

Through the official ``kubernetes`` client (``pip install cellvault[k8s]``),
with the kubeconfig (``KUBECONFIG``, ``~/.kube/config``) or, inside a pod,
the service account. Two forms:

* ``service/<namespace>/<name>[/<label>]``: the Service's selector label
  (default ``cellvault.io/site``) is set to the new site's id, so the Service
  sends its traffic to the pods of that site;
* ``ingress/<namespace>/<name>/<service>``: every backend of the Ingress
  (its rules' paths and its default backend) is pointed at Service
  *service*, where ``{site}`` stands for the new site's id
  (``gateway-{site}``).

Patching twice to the same site changes nothing: safe to repeat.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs

from ..config import Config
from ..errors import ConfigError, DrError
from ..hookspecs import hookimpl
from ..log import get_logger

__all__ = ["DEFAULT_LABEL", "K8sSwitch", "cellvault_switch_traffic"]

log = get_logger(__name__)

#: The Service selector label a ``service/...`` switch sets to the site id.
DEFAULT_LABEL = "cellvault.io/site"


#: (connect, read) seconds of each Kubernetes API request: an API server that
#: does not answer fails the switch ("switch by hand") instead of hanging it.
REQUEST_TIMEOUT = (10.0, 60.0)


@attrs.frozen
class K8sSwitch:
    """What ``DR_SWITCH_K8S`` names: a Service's selector or an Ingress's backends."""

    kind: str
    namespace: str
    name: str
    #: The selector label (a Service) or the backend Service's name template (an Ingress).
    detail: str

    @classmethod
    def parse(cls, text: str) -> K8sSwitch:
        """Read ``service/<ns>/<name>[/<label>]`` or ``ingress/<ns>/<name>/<service>``."""
        parts = text.strip().split("/")
        kind = parts[0].lower() if parts else ""
        if kind == "service" and len(parts) in (3, 4) and all(parts[1:3]):
            label = "/".join(parts[3:]) or DEFAULT_LABEL
            return cls("service", parts[1], parts[2], label)
        if kind == "ingress" and len(parts) == 4 and all(parts[1:]):
            return cls("ingress", parts[1], parts[2], parts[3])
        raise ConfigError(
            f"DR_SWITCH_K8S={text!r} is not service/<namespace>/<name>[/<label>] or "
            "ingress/<namespace>/<name>/<service, {site} for the site id>"
        )

    def apply(self, site: str, api_client: Any) -> str:
        """Patch the object through *api_client* (a ``kubernetes.client.ApiClient``)."""
        from kubernetes import client

        if self.kind == "service":
            body = {"spec": {"selector": {self.detail: site}}}
            client.CoreV1Api(api_client).patch_namespaced_service(
                self.name, self.namespace, body, _request_timeout=REQUEST_TIMEOUT
            )
            return f"Service {self.namespace}/{self.name} selects {self.detail}={site}"
        api = client.NetworkingV1Api(api_client)
        ingress = api_client.sanitize_for_serialization(
            api.read_namespaced_ingress(self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT)
        )
        service = self.detail.replace("{site}", site)
        spec = ingress.get("spec") or {}
        backends = [spec.get("defaultBackend")] + [
            path.get("backend")
            for rule in spec.get("rules") or []
            for path in (rule.get("http") or {}).get("paths") or []
        ]
        for backend in backends:
            if backend and backend.get("service"):
                backend["service"]["name"] = service
        api.patch_namespaced_ingress(
            self.name, self.namespace, {"spec": spec}, _request_timeout=REQUEST_TIMEOUT
        )
        return f"Ingress {self.namespace}/{self.name} routes to Service {service}"


def _api_client() -> Any:
    try:
        from kubernetes import client, config
    except ImportError:
        raise ConfigError(
            "DR_SWITCH_K8S needs the kubernetes client: pip install 'cellvault[k8s]'"
        ) from None
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    try:
        if any(Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p):
            return config.new_client_from_config(config_file=kubeconfig)
        config.load_incluster_config()
    except config.ConfigException as exc:
        raise DrError(f"DR_SWITCH_K8S: no usable Kubernetes configuration ({exc})") from None
    return client.ApiClient()


@hookimpl
def cellvault_switch_traffic(
    site: str, previous_site: str | None, event: str, config: Config
) -> str | None:
    """Patch ``DR_SWITCH_K8S`` for *site*; ``None`` when it is not set."""
    if not config.dr_switch_k8s:
        return None
    switch = K8sSwitch.parse(config.dr_switch_k8s)
    from kubernetes.client.exceptions import ApiException

    with _api_client() as api_client:
        try:
            done = switch.apply(site, api_client)
        except ApiException as exc:
            raise DrError(
                f"DR_SWITCH_K8S: the Kubernetes API refused to patch {switch.kind} "
                f"{switch.namespace}/{switch.name}: {exc.status} {exc.reason}"
            ) from None
    log.info("traffic.k8s", done=done, previous_site=previous_site, switch_event=event)
    return done
